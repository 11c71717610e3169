import pytest
import torch

from prvr.data.datasets import Batch
from prvr.models import build_model
from prvr.models.base import TrainStep
from prvr.models.dreamprvr import DreamPRVRLoss, DreamPRVRLossConfig
from prvr.models.layers import StackedAttentionBlocks, gaussian_kernel
from tests.conftest import tiny_model_config


def make_loss(cfg, **kw):
    return DreamPRVRLoss(DreamPRVRLossConfig(**kw), cfg)


def batch(n_videos=3, caps=(2, 1, 3), lens=(5, 40, 200), cfg=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = cfg or tiny_model_config()
    clip = torch.nn.functional.normalize(torch.randn(n_videos, 32, cfg.visual_dim, generator=g), dim=-1)
    n_frames = [min(n, 128) for n in lens[:n_videos]]
    frames = torch.zeros(n_videos, max(n_frames), cfg.visual_dim)
    fmask = torch.zeros(n_videos, max(n_frames))
    for i, n in enumerate(n_frames):
        frames[i, :n] = torch.randn(n, cfg.visual_dim, generator=g)
        fmask[i, :n] = 1
    labels = torch.tensor([v for v in range(n_videos) for _ in range(caps[v])])
    N = len(labels)
    lq = torch.randint(1, 30, (N,), generator=g)
    text = torch.randn(N, int(lq.max()), cfg.text_dim, generator=g)
    tmask = (torch.arange(int(lq.max()))[None] < lq[:, None]).float()
    return Batch(clip=clip, frames=frames, frame_mask=fmask, text=text * tmask[..., None], text_mask=tmask, labels=labels)


def test_stacked_blocks_equal_reference_forward_and_grad():
    torch.manual_seed(0)
    D, L, K, A = 32, 16, 3, 8
    bank = StackedAttentionBlocks(A, D, 4, dropout=0.0)
    for p in bank.parameters():
        torch.nn.init.normal_(p, 0, 0.2)
    x = torch.randn(5, L, D, requires_grad=True)
    ctx_extra = torch.randn(5, K, D, requires_grad=True)
    mask = (torch.rand(5, L + K) > 0.2).float()
    mask[:, L:] = 1
    scale = torch.stack([torch.ones(L, L)] + [gaussian_kernel(L, w) for w in (0.25, .5, 1, 2, 4, 8, 16)])
    scale = torch.cat([scale, torch.ones(A, L, K)], -1)
    ctx = torch.cat([x, ctx_extra], 1)
    out = bank(x, ctx, mask, scale)
    with torch.no_grad():
        torch.testing.assert_close(bank(x, ctx, mask, scale), out.detach(), atol=4e-6, rtol=0)  # measured 3.6e-7
    ref = torch.stack([blk(x, key_mask=mask, context=ctx, logit_scale=scale[a]) for a, blk in enumerate(bank.blocks)])
    torch.testing.assert_close(out, ref, atol=4e-6, rtol=0)  # measured 3.6e-7
    w = torch.randn_like(out)
    g1 = torch.autograd.grad((out * w).sum(), [x, ctx_extra, *bank.parameters()])
    g2 = torch.autograd.grad((ref * w).sum(), [x, ctx_extra, *bank.parameters()])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=8e-5, rtol=0)  # measured 7.6e-6


def test_dropout_rate_in_training():
    from prvr.models.fused import drop, relu_drop

    x = torch.ones(200_000)
    kept = (drop(x, 0.31, True) != 0).float().mean()
    assert abs(float(kept) - 0.69) < 0.005
    assert torch.equal(drop(x, 0.31, False), x)
    y = relu_drop(torch.randn(200_000, requires_grad=True), 0.25, True)
    assert abs(float((y > 0).float().mean()) - 0.375) < 0.005


def test_inference_deterministic_and_query_independent():
    cfg = tiny_model_config()
    model = build_model(cfg).eval()
    b = batch(cfg=cfg)
    with torch.no_grad():
        a = model.encode_videos(b)
        again = model.encode_videos(b)
        single = model.encode_videos(Batch(clip=b.clip[1:2], frames=b.frames[1:2], frame_mask=b.frame_mask[1:2]))
    clip, frame = a.sets["clip"].tokens, a.sets["frame"].tokens
    assert torch.equal(clip, again.sets["clip"].tokens) and torch.equal(frame, again.sets["frame"].tokens)
    torch.testing.assert_close(single.sets["clip"].tokens, clip[1:2], atol=3e-6, rtol=0)  # no cross-video leakage
    assert torch.all(frame[0, 5:] == 0)  # padded frame positions zeroed
    with torch.no_grad():
        q = model.encode_queries(Batch(text=b.text[:1], text_mask=b.text_mask[:1]))  # a single query
        s = model.score(q, a)
    assert q.vectors.shape == (1, 2, cfg.hidden_size) and s.shape == (1, 3)


def test_inference_does_no_training_work(monkeypatch):
    cfg = tiny_model_config()
    model = build_model(cfg).eval()
    called = []
    monkeypatch.setattr(model.text_perturbation, "forward", lambda *a, **k: called.append(1))
    with torch.no_grad():
        model.encode_videos(batch(cfg=cfg))
    assert not called


@pytest.mark.parametrize("ablation", [{}, {"use_registers": False}, {"use_diffusion": False},
                                      {"video_centric_init": False}, {"sinusoidal_time_embedding": True},
                                      {"num_registers": 1}])
def test_training_step_all_variants(ablation):
    cfg = tiny_model_config(**ablation)
    model = build_model(cfg).train()
    b = batch(cfg=cfg)
    loss, terms = make_loss(cfg)(model.forward_train(b), b.labels, TrainStep(hard_negative=True))
    loss.backward()
    assert torch.isfinite(loss)
    assert ("diffusion" in terms) == (cfg.use_registers and cfg.use_diffusion)
    assert ("kl" in terms) == cfg.use_registers
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if not cfg.use_registers:
        assert not hasattr(model, "denoiser") and not hasattr(model, "video_sampler")
    if cfg.sinusoidal_time_embedding:
        from prvr.models.dreamprvr.samplers import sinusoidal_table

        assert torch.equal(model.denoiser.time_embed.table.weight, sinusoidal_table(cfg.timesteps, cfg.hidden_size))


def test_ablation_changes_registers():
    base = build_model(tiny_model_config()).eval()
    no_diff = build_model(tiny_model_config(use_diffusion=False)).eval()
    no_diff.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("denoiser.")})
    b = batch()
    with torch.no_grad():
        assert not torch.allclose(base.encode_videos(b).sets["clip"].tokens, no_diff.encode_videos(b).sets["clip"].tokens)


def test_single_video_batch_and_single_caption():
    cfg = tiny_model_config()
    model = build_model(cfg).train()
    b = batch(n_videos=1, caps=(1,), lens=(7,), cfg=cfg)
    loss, _ = make_loss(cfg)(model.forward_train(b), b.labels, TrainStep())
    loss.backward()
    assert torch.isfinite(loss)


def test_too_many_frames_is_an_error():
    cfg = tiny_model_config()
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="max_ctx_l"):
        model.encode_videos(Batch(clip=torch.zeros(1, 32, 48), frames=torch.zeros(1, 129, 48), frame_mask=torch.ones(1, 129)))


def test_device_is_a_parameter():
    model = build_model(tiny_model_config(), device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())


@pytest.mark.parametrize("structure,present", [("both", {"query_diversity", "query_similarity_preservation"}),
                                               ("qdl", {"query_diversity"}), ("qsp", {"query_similarity_preservation"}),
                                               ("none", set())])
def test_textual_structure_ablation(structure, present):
    cfg = tiny_model_config()
    model = build_model(cfg).train()
    b = batch(cfg=cfg)
    _, terms = make_loss(cfg, textual_structure=structure)(model.forward_train(b), b.labels, TrainStep())
    assert {"query_diversity", "query_similarity_preservation"} & set(terms) == present


@pytest.mark.parametrize("training,chunk", [(True, 8), (False, 2)])
def test_recompute_keeps_loss_and_gradients(training, chunk):
    """Activation checkpointing of the branch banks changes memory, not results: in training with one chunk the
    dropout masks are replayed exactly; without dropout, chunking over videos changes nothing either."""
    cfg = tiny_model_config()
    model = build_model(cfg).train(training)
    criterion = make_loss(cfg)
    b = batch(cfg=cfg)

    def run(n):
        model.set_recompute(n)
        torch.manual_seed(3)
        loss, _ = criterion(model.forward_train(b), b.labels, TrainStep())
        model.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss0, g0 = run(0)
    loss1, g1 = run(chunk)
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=1e-6)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=0)  # measured 4.8e-7


def test_single_query_attention_equals_plain_form():
    """The fusion's one-row cross-attention folds the K/V projections into the query; same values and grads."""
    import math

    from prvr.models.layers import MultiHeadAttention

    torch.manual_seed(0)
    B, L, D, h = 3, 10, 32, 4
    mha = MultiHeadAttention(D, h, dropout=0.0)
    for p in mha.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    x, ctx = torch.randn(B, 1, D, requires_grad=True), torch.randn(B, L, D, requires_grad=True)
    mask = (torch.rand(B, L) > 0.3).float()
    mask[:, 0] = 1
    out = mha(x, ctx, mask)
    q, k, v = (m(t).view(B, -1, h, D // h).transpose(1, 2) for m, t in ((mha.query, x), (mha.key, ctx), (mha.value, ctx)))
    logits = q @ k.transpose(-1, -2) / math.sqrt(D // h) + (1 - mask[:, None, None]) * -10000.0
    ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, 1, D)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(out)
    params = [x, ctx, *mha.parameters()]
    for a, b in zip(torch.autograd.grad((out * w).sum(), params), torch.autograd.grad((ref * w).sum(), params),
                    strict=True):
        torch.testing.assert_close(a, b, atol=6e-5, rtol=0)  # measured 5.7e-6


def test_fused_path_equals_plain_reference_path():
    """The whole model in training (fused branch bank, folded single-row attention, fused ReLU/LayerNorm kernels,
    recompute) against the plain reference path (PRVR_REFERENCE_PATH=1): same outputs, loss and gradients."""
    from prvr.models.fused import reference_path

    cfg = tiny_model_config(input_drop=0.0, drop=0.0)
    model = build_model(cfg).train()
    model.set_recompute(2)
    criterion = make_loss(cfg)
    b = batch(cfg=cfg)

    def run():
        torch.manual_seed(5)  # the textual perturbation draws
        out = model.forward_train(b)
        loss, _ = criterion(out, b.labels, TrainStep(hard_negative=True, generator=torch.Generator().manual_seed(1)))
        model.zero_grad()
        loss.backward()
        return out, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fused_out, fused_loss, fused_grads = run()
    with reference_path():
        plain_out, plain_loss, plain_grads = run()
    for name in ("query", "query_first", "clip", "frame", "mu", "logvar", "eps_pred"):
        torch.testing.assert_close(getattr(fused_out, name), getattr(plain_out, name), atol=2e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(fused_loss, plain_loss, atol=1e-6, rtol=1e-6)
    assert fused_grads.keys() == plain_grads.keys() and len(fused_grads) > 300
    for n in fused_grads:
        torch.testing.assert_close(fused_grads[n], plain_grads[n], atol=1e-6, rtol=1e-4, msg=n)
