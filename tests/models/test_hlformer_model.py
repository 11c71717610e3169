"""HLFormer's behaviour beyond parity: the paper's ablations train, recompute and the fused path change nothing,
the in-place clamps of the original, odd batch shapes, bad input."""

import pytest
import torch

from prvr.data.datasets import Batch
from prvr.models import build_loss, build_model
from prvr.models.base import TrainStep
from prvr.models.hlformer.loss import triplet_with_negatives
from prvr.models.losses import triplet_ranking
from prvr.models.presets import load_preset


def tiny(**kw):
    cfg = load_preset("tiny", "hlformer")
    for k, v in kw.items():
        setattr(cfg.model if hasattr(cfg.model, k) else cfg.loss, k, v)
    return cfg.check()


def batch(cfg, caps=(2, 1, 3), lens=(5, 40, 128), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(caps)
    clip = torch.nn.functional.normalize(torch.randn(n, 32, cfg.visual_dim, generator=g), dim=-1)
    frames = torch.zeros(n, max(lens), cfg.visual_dim)
    fmask = torch.zeros(n, max(lens))
    for i, k in enumerate(lens):
        frames[i, :k] = torch.randn(k, cfg.visual_dim, generator=g)
        fmask[i, :k] = 1
    labels = torch.tensor([v for v in range(n) for _ in range(caps[v])])
    lq = torch.randint(1, 30, (len(labels),), generator=g)
    tmask = (torch.arange(int(lq.max()))[None] < lq[:, None]).float()
    text = torch.randn(len(labels), int(lq.max()), cfg.text_dim, generator=g) * tmask[..., None]
    return Batch(clip=clip, frames=frames, frame_mask=fmask, text=text, text_mask=tmask, labels=labels)


def step(model, criterion, b, seed=3, hard=False):
    torch.manual_seed(seed)
    loss, terms = criterion(model.forward_train(b), b.labels,
                            TrainStep(hard_negative=hard, generator=torch.Generator().manual_seed(seed)))
    model.zero_grad()
    loss.backward()
    return loss.detach(), terms, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ablation", [{}, {"attention_spaces": "euclidean"}, {"attention_spaces": "lorentz"},
                                      {"branch_fusion": "mean"}, {"learn_curv": False},
                                      {"use_partial_order": False, "use_query_diversity": False},
                                      {"single_query_pass": True}])
def test_training_step_all_variants(ablation):
    cfg = tiny(**ablation)
    model = build_model(cfg.model).train()
    loss, terms, grads = step(model, build_loss(cfg.loss, cfg.model), batch(cfg.model))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    assert ("partial_order" in terms) == cfg.loss.use_partial_order
    assert ("query_diversity" in terms) == cfg.loss.use_query_diversity
    assert ("curv" in grads) == (cfg.model.learn_curv and cfg.loss.use_partial_order)
    kinds = {"euclidean": "lorentz.blocks", "lorentz": "euclidean.blocks"}.get(cfg.model.attention_spaces)
    assert kinds is None or not any(kinds in n for n in grads)
    assert ("clip_encoder.fusion.hidden.weight" in grads) == (cfg.model.branch_fusion == "adaptive")


@pytest.mark.parametrize("dropout,chunk", [(0.1, 8), (0.0, 1), (0.0, 2)])
def test_recompute_keeps_loss_and_gradients(dropout, chunk):
    """Recomputing the branch banks in backward changes memory, not results: with one chunk the dropout masks are
    replayed exactly; without dropout, chunking over videos changes nothing either."""
    cfg = tiny(input_drop=dropout, drop=dropout)
    model = build_model(cfg.model).train()
    criterion = build_loss(cfg.loss, cfg.model)
    b = batch(cfg.model)
    model.set_recompute(0)
    loss0, _, g0 = step(model, criterion, b)
    model.set_recompute(chunk)
    loss1, _, g1 = step(model, criterion, b)
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=1e-6)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)


def test_fused_path_equals_plain_reference_path():
    """Training through the fused branch bank and folded single-row attention equals the plain reference path."""
    from prvr.models.fused import reference_path

    cfg = tiny(input_drop=0.0, drop=0.0)
    model = build_model(cfg.model).train()
    model.set_recompute(2)
    criterion = build_loss(cfg.loss, cfg.model)
    b = batch(cfg.model)
    fused = step(model, criterion, b, hard=True)
    with reference_path():
        plain = step(model, criterion, b, hard=True)
    torch.testing.assert_close(fused[0], plain[0], atol=1e-6, rtol=1e-6)
    assert fused[2].keys() == plain[2].keys() and len(fused[2]) > 300
    for n in fused[2]:
        torch.testing.assert_close(fused[2][n], plain[2][n], atol=1e-6, rtol=1e-4, msg=n)


def test_clamps_in_place_as_the_original():
    """scale_alpha <= 0 at every Lorentz attention call (inference too); curvature and the alphas in training."""
    cfg = tiny()
    model = build_model(cfg.model)
    blk = model.frame_encoder.lorentz.blocks[0]
    with torch.no_grad():
        blk.scale_alpha.fill_(0.5)
        model.curv.fill_(5.0)
        model.textual_alpha.fill_(0.25)
    b = batch(cfg.model)
    with torch.no_grad():
        model.eval().encode_videos(b)
        assert blk.scale_alpha.item() == 0.0 and model.curv.item() == 5.0 and model.textual_alpha.item() == 0.25
        model.train().forward_train(b)
        assert model.curv.item() == pytest.approx(torch.tensor(10.0).log().item()) and model.textual_alpha.item() == 0


def test_given_negatives_equal_the_shared_triplet():
    """The injection point computes the shared triplet loss: with the negatives the shared sampler picks (replayed
    from the same generator), and deterministically with hard negatives from a pool of one."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(9, 4, generator=g) * 2 - 1
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3])
    shared = triplet_ranking(scores, labels, 0.2, hard=False, hard_pool_size=20, generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    pos = labels[:, None] == torch.arange(4)[None]
    order = scores.masked_fill(pos, float("inf")).argsort(dim=1, descending=True)
    neg_video = order.gather(1, torch.randint(1, 4, (9,), generator=replay)[:, None]).squeeze(1)
    n_neg = (~pos).sum(dim=0)  # (B,) queries of other videos
    pick = (torch.rand(4, generator=replay) * n_neg).long()
    v_order = scores.T.masked_fill(pos.T, float("-inf")).argsort(dim=1, descending=True)  # (B, N) negatives first
    neg_query = v_order.gather(1, pick[:, None]).squeeze(1)
    torch.testing.assert_close(triplet_with_negatives(scores, labels, 0.2, neg_video, neg_query), shared)
    hard = triplet_ranking(scores, labels, 0.2, hard=True, hard_pool_size=1)
    top_video = scores.masked_fill(pos, -9).argmax(dim=1)
    top_query = scores.masked_fill(pos, -9).argmax(dim=0)
    torch.testing.assert_close(triplet_with_negatives(scores, labels, 0.2, top_video, top_query), hard)


def test_single_video_and_single_caption():
    """The original's `.squeeze()` drops the batch axis of a lone video or query; here batch axes stay."""
    cfg = tiny()
    model = build_model(cfg.model).train()
    b = batch(cfg.model, caps=(1,), lens=(7,))
    out = model.forward_train(b)
    assert out.hyp_video.shape == (1, cfg.model.hidden_size) and out.hyp_query.shape == (1, cfg.model.hidden_size)
    loss, _ = build_loss(cfg.loss, cfg.model)(out, b.labels, TrainStep())
    assert torch.isfinite(loss)


def test_too_many_frames_is_an_error():
    cfg = tiny()
    model = build_model(cfg.model)
    b = batch(cfg.model, caps=(1, 1), lens=(5, 129))
    with pytest.raises(ValueError, match="max_ctx_l"):
        model.encode_videos(b)


def test_lorentz_heads_must_divide():
    with pytest.raises(Exception, match="lorentz_dim"):
        tiny(lorentz_dim=14)


def test_degenerate_heads_stay_finite():
    """Where the original gives NaN (a head with a zero space part; a point at the origin, e.g. a row zeroed by
    ReLU and dropout at small widths), prvr gives the limit, with finite gradients; elsewhere the same numbers."""
    from prvr.models.hlformer.attention import heads_on_hyperboloid
    from prvr.models.hlformer.lorentz import LorentzManifold

    y = torch.randn(2, 3, 4, 5)
    y[0, 1, 2, 1:] = 0.0  # one head's space part exactly zero
    y[1, 0, 0, 1:] = 1e-21  # one nearly zero
    y.requires_grad_(True)
    scale, k = torch.tensor(0.3), torch.tensor(1.0)
    pts = heads_on_hyperboloid(y, scale, k)
    pts.sum().backward()
    assert torch.isfinite(pts).all() and torch.isfinite(y.grad).all()
    assert (pts[0, 1, 2, 1:] == 0).all() and (pts[1, 0, 0, 1:] == 0).all()
    time = y[..., :1].sigmoid() * scale.exp() + 1.1
    plain = y[..., 1:] * ((time * time - k) / y[..., 1:].pow(2).sum(-1, keepdim=True)).sqrt()  # the original's form
    keep = torch.ones(2, 3, 4, dtype=torch.bool)
    keep[0, 1, 2] = keep[1, 0, 0] = False
    torch.testing.assert_close(pts[..., 1:][keep], plain[keep], rtol=0, atol=0)
    origin = torch.zeros(4, 6)
    origin[:, 0] = 1.0
    origin[1:, 1:] = torch.randn(3, 5) * 1e-3  # near the origin: the usual formula
    origin[1:, 0] = (1 + origin[1:, 1:].pow(2).sum(-1)).sqrt()
    out = LorentzManifold.logmap0(origin)
    assert torch.isfinite(out).all() and (out[0] == 0).all()
