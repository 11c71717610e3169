"""The contract's scoring and representations by hand: weighted max-similarity, padding rules, best tokens, token
time spans, query and video containers. Fast; also what `make mutate` runs on prvr.models.base."""

import pytest
import torch

from prvr.config import ModelConfig
from prvr.models import base
from prvr.models.base import (
    BatchShare,
    QueryRepr,
    TokenLayout,
    TokenSet,
    VideoRepr,
    max_similarity_scores,
    pad_frames,
    per_item_normal,
    set_similarities,
    sharing,
)
from prvr.models.dreamprvr import DreamPRVR
from tests.conftest import tiny_model_config


def by_hand(q: QueryRepr, v: VideoRepr, layouts):
    """Per set: sum over rows aimed at it of a_m * max over real (or zero-padded) tokens of cos."""
    out = {}
    for name, layout in layouts.items():
        s = v.sets[name]
        N, B = q.vectors.shape[0], s.tokens.shape[0]
        got = torch.zeros(N, B, dtype=torch.float64)
        for n in range(N):
            for b in range(B):
                for m, t in enumerate(q.targets):
                    if t != name:
                        continue
                    cos = [float(torch.nn.functional.cosine_similarity(q.vectors[n, m], s.tokens[b, ell], dim=0))
                           for ell in range(s.tokens.shape[1]) if s.mask is None or s.mask[b, ell] > 0]
                    if s.mask is not None and layout.pads_score_zero and s.mask[b].sum() < s.tokens.shape[1]:
                        cos.append(0.0)
                    got[n, b] += float(q.weights[n, m]) * max(cos)
        out[name] = got
    return out


def case(seed=0, pads_zero=True, dim=5):
    g = torch.Generator().manual_seed(seed)
    layouts = {"clip": TokenLayout(4), "frame": TokenLayout(6, ragged=True, pads_score_zero=pads_zero)}
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    v = VideoRepr({"clip": TokenSet(torch.randn(3, 4, dim, generator=g)),
                   "frame": TokenSet(torch.randn(3, 6, dim, generator=g) * mask[..., None], mask)})
    q = QueryRepr(torch.randn(2, 3, dim, generator=g), torch.tensor([[0.7, 0.2, 1.0], [0.1, 0.0, 2.0]]),
                  ("clip", "frame", "clip"))
    return q, v, layouts


@pytest.mark.parametrize("block", [1 << 24, 1, 40, 72])  # 2 x 3 x 6 cosines a video: one pass; 1 a block; 2, 1
@pytest.mark.parametrize("pads_zero", [True, False])
def test_max_similarity_scores_by_hand(pads_zero, block, monkeypatch):
    monkeypatch.setattr(base, "SCORE_BLOCK", block)
    for seed in range(3):
        q, v, layouts = case(seed, pads_zero)
        got = max_similarity_scores(q, v, layouts)
        want = by_hand(q, v, layouts)
        for name in layouts:
            assert got[name].shape == want[name].shape
            torch.testing.assert_close(got[name].double(), want[name], atol=1e-6, rtol=0)


def test_padding_rule_matters():
    q, v, layouts = case(1)
    v.sets["frame"].tokens[2, 0] = -q.vectors[0, 1]  # video 2's only frame points away from row 1
    zero = max_similarity_scores(q, v, layouts)["frame"]
    never = max_similarity_scores(q, v, {**layouts, "frame": TokenLayout(6, ragged=True)})["frame"]
    assert zero[0, 2] == 0.0 and never[0, 2] == pytest.approx(-0.2, abs=1e-6)  # a_m * cos = 0.2 * -1
    sims = set_similarities(q.normalize(), v.normalize().sets["frame"], TokenLayout(6, ragged=True), [1])
    assert sims.shape == (2, 1, 3, 6) and torch.isinf(sims[0, 0, 1, 2:]).all()


def test_model_score_and_best_tokens():
    model = DreamPRVR(tiny_model_config(hidden_size=8, n_heads=1))
    q, v, _ = case(2, dim=8)
    q = QueryRepr(q.vectors[:, :2], q.weights[:, :2], ("clip", "frame"))
    v = VideoRepr({"clip": TokenSet(torch.randn(3, 32, 8)), "frame": v.sets["frame"]})
    layouts = model.token_layouts()
    v = VideoRepr({"clip": v.sets["clip"], "frame": TokenSet(torch.nn.functional.pad(v.sets["frame"].tokens, (0, 0, 0, 122)),
                                                               torch.nn.functional.pad(v.sets["frame"].mask, (0, 122)))})
    want = by_hand(q, v, layouts)
    per_set = model.set_scores(q, v)
    torch.testing.assert_close(model.score(q, v).double(), 0.6 * want["clip"] + 0.4 * want["frame"], atol=1e-6, rtol=0)
    for name in layouts:
        torch.testing.assert_close(per_set[name].double(), want[name], atol=1e-6, rtol=0)
    best = model.best_tokens(q, v)
    qn, vn = q.normalize(), v.normalize()
    for name, m in (("clip", 0), ("frame", 1)):
        cos = torch.einsum("nd,bld->nbl", qn.vectors[:, m], vn.sets[name].tokens)
        if vn.sets[name].mask is not None:  # padding enters the frame max as cosine 0 (pads_score_zero)
            cos = cos.masked_fill(vn.sets[name].mask[None] == 0, 0.0 if layouts[name].pads_score_zero else -2.0)
        assert torch.equal(best[name], cos.argmax(-1)), name


def test_best_token_follows_the_row_that_contributes_most():
    layouts = {"clip": TokenLayout(3)}
    tokens = torch.eye(4)[None, :3]  # token i along axis i
    q = QueryRepr(torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]]), torch.tensor([[0.2, 0.9]]), ("clip", "clip"))

    class M(DreamPRVR):
        def token_layouts(self):
            return layouts

    model = M(tiny_model_config(hidden_size=4, n_heads=1))
    v = VideoRepr({"clip": TokenSet(tokens)})
    assert model.best_tokens(q, v)["clip"].tolist() == [[1]]  # row 1 (weight 0.9) decides
    q.weights[0] = torch.tensor([0.9, 0.2])
    assert model.best_tokens(q, v)["clip"].tolist() == [[0]]


def test_token_layouts_map_tokens_to_frames():
    clip = TokenLayout(32)
    assert clip.capacity == 32 and clip.frame_rows(64, 0) == (0, 2) and clip.frame_rows(64, 31) == (62, 63)
    assert clip.frame_rows(10, 5) == (2, 3)  # b = min(round(i*10/32), 9): cell 5 -> [2, 2) degenerate -> one row
    frame = TokenLayout(128, ragged=True, pads_score_zero=True)
    assert frame.frame_rows(50, 7) == (7, 8) and frame.frame_rows(256, 3) == (6, 8)
    props = TokenLayout(8, proposals=((0, 2), (2, 8), (0, 8)))
    assert props.capacity == 3 and props.frame_rows(16, 1) == (4, 15) and props.frame_rows(16, 2) == (0, 15)
    for layout in (clip, frame, props):
        assert TokenLayout.from_dict(layout.to_dict()) == layout
    assert frame.to_dict() == {"cells": 128, "ragged": True, "pads_score_zero": True, "proposals": None}


def test_query_and_video_containers():
    a = QueryRepr(torch.ones(2, 1, 4), torch.ones(2, 1), ("clip",))
    b = QueryRepr(torch.ones(1, 3, 4) * 2, torch.tensor([[1.0, 0.5, 0.25]]), ("clip", "frame", "frame"))
    c = QueryRepr.cat([a, b])
    assert c.vectors.shape == (3, 3, 4) and c.targets == b.targets
    assert c.weights.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0.5, 0.25]] and c.vectors[0, 1:].abs().sum() == 0
    assert c.rows_for("frame") == [1, 2] and c.rows_for("clip") == [0] and len(c) == 3 and len(c[1:]) == 2
    with pytest.raises(ValueError, match="different row targets"):
        QueryRepr.cat([QueryRepr(torch.ones(1, 1, 4), torch.ones(1, 1), ("frame",)), b])
    single = QueryRepr.single(torch.tensor([[3.0, 4.0]]), ("clip", "frame"))
    assert single.vectors.shape == (1, 2, 2) and single.weights.tolist() == [[1.0, 1.0]]
    n = single.normalize()
    assert n.normalized and torch.allclose(n.vectors[0, 0], torch.tensor([0.6, 0.8])) and n.normalize() is n
    v = VideoRepr({"clip": TokenSet(torch.full((2, 3, 2), 2.0)), "frame": TokenSet(torch.ones(2, 4, 2), torch.ones(2, 4))})
    w = VideoRepr.cat([v, v.map(lambda t: t * 3)])
    assert len(w) == 4 and w.sets["frame"].mask.shape == (4, 4) and float(w.sets["clip"].tokens[3, 0, 0]) == 6.0
    vn = w.normalize()
    assert vn.normalized and vn.normalize() is vn and torch.allclose(vn.sets["clip"].tokens.norm(dim=-1), torch.ones(4, 3))


def test_collect_equals_cat_and_refuses_other_shapes():
    parts = [VideoRepr({"clip": TokenSet(torch.randn(n, 3, 2)), "frame": TokenSet(torch.randn(n, 4, 2), torch.ones(n, 4))})
             for n in (2, 3, 1)]
    got, want = VideoRepr.collect(iter(parts), 6), VideoRepr.cat(parts)
    for name, s in want.sets.items():
        assert torch.equal(got.sets[name].tokens, s.tokens)
        assert (s.mask is None and got.sets[name].mask is None) or torch.equal(got.sets[name].mask, s.mask)
    with pytest.raises(ValueError, match=r"^expected 5 videos, got more$"):
        VideoRepr.collect(iter(parts), 5)
    odd = VideoRepr({"clip": TokenSet(torch.randn(1, 1, 2)), "frame": TokenSet(torch.randn(1, 4, 2), torch.ones(1, 4))})
    with pytest.raises(ValueError, match=r"^token set 'clip': part of shape \(1, 1, 2\) after \(3, 2\); cannot be "
                                         r"concatenated$"):
        VideoRepr.collect(iter([parts[0], odd]), 3)
    with pytest.raises(ValueError, match=r"^expected 7 videos, got 6$"):
        VideoRepr.collect(iter(parts), 7)
    with pytest.raises(ValueError, match=r"^expected 0 videos, got 0$"):  # no parts: nothing to take shapes from
        VideoRepr.collect(iter([]), 0)


# --- what `make mutate` found untested in prvr.models.base
def test_layout_from_dict_defaults():
    """A layout written before `ragged` / `pads_score_zero` existed reads as neither."""
    layout = TokenLayout.from_dict({"cells": 32})
    assert layout == TokenLayout(32) and layout.ragged is False and layout.pads_score_zero is False
    assert TokenLayout.from_dict({"cells": 8, "proposals": [[0, 2]]}) == TokenLayout(8, proposals=((0, 2),))


def test_map_and_cat_keep_a_video_repr_normalized():
    """A repr marked normalized (the index's tokens) is not normalised again after map (a dtype or device move)
    or cat: scoring uses its tokens as they are."""
    tokens = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # deliberately not unit: shows whether it is renormalised
    v = VideoRepr({"clip": TokenSet(tokens)}, normalized=True)
    q = QueryRepr(torch.tensor([[[1.0, 0.0]]]), torch.ones(1, 1), ("clip",))
    layouts = {"clip": TokenLayout(2)}
    for w in (v.map(lambda t: t.double()).map(lambda t: t.float()), VideoRepr.cat([v, v])):
        assert w.normalized is True and w.normalize() is w
        assert max_similarity_scores(q, w, layouts)["clip"][0, 0] == 2.0  # 1 after a renormalisation
    plain = VideoRepr({"clip": TokenSet(tokens)})
    assert plain.map(lambda t: t).normalized is False and VideoRepr.cat([plain]).normalized is False
    assert max_similarity_scores(q, VideoRepr.cat([plain]), layouts)["clip"][0, 0] == 1.0


def test_query_repr_map_applies_to_weights_too():
    q = QueryRepr(torch.ones(3, 2, 4), torch.tensor([[1.0, 0.5]] * 3), ("clip", "frame"))
    d = q.map(lambda t: t.double())
    assert d.vectors.dtype == torch.float64 and d.weights.dtype == torch.float64 and d.targets == q.targets
    s = q.map(lambda t: t[:1])
    assert s.vectors.shape == (1, 2, 4) and s.weights.tolist() == [[1.0, 0.5]]


def test_query_repr_cat_pads_a_part_one_row_short():
    a = QueryRepr(torch.ones(1, 2, 4), torch.tensor([[1.0, 0.5]]), ("clip", "frame"))
    b = QueryRepr(torch.ones(2, 3, 4) * 2, torch.tensor([[1.0, 0.5, 0.25]] * 2), ("clip", "frame", "frame"))
    for parts, row_a, row_b in (([a, b], 0, 1), ([b, a], 2, 0)):  # a's query, one of b's
        c = QueryRepr.cat(parts)
        assert c.vectors.shape == (3, 3, 4) and c.targets == b.targets
        assert c.weights[row_a].tolist() == [1.0, 0.5, 0.0] and c.vectors[row_a, 2].abs().sum() == 0
        assert c.weights[row_b].tolist() == [1.0, 0.5, 0.25] and c.vectors[row_b, 2].tolist() == [2.0] * 4
    with pytest.raises(ValueError, match=r"^query parts with different row targets cannot be concatenated$"):
        QueryRepr.cat([QueryRepr(torch.ones(1, 2, 4), torch.ones(1, 2), ("frame", "frame")), b])


def test_pad_frames():
    frames, mask = torch.randn(2, 3, 4), torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    f, m = pad_frames(frames, mask, 5)
    assert f.shape == (2, 5, 4) and torch.equal(f[:, :3], frames) and f[:, 3:].abs().sum() == 0
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    f, m = pad_frames(frames, mask, 3)
    assert torch.equal(f, frames) and torch.equal(m, mask)
    with pytest.raises(ValueError, match=r"^3 frames exceed max_ctx_l=2; sample frames first \(prvr.data.frame_sequence\)$"):
        pad_frames(frames, mask, 2)


def test_a_model_refuses_another_models_config():
    with pytest.raises(TypeError, match=r"^DreamPRVR needs a DreamPRVRConfig, got ModelConfig$"):
        DreamPRVR(ModelConfig())

    class Sub(DreamPRVR):
        pass

    with pytest.raises(TypeError, match=r"^Sub needs a DreamPRVRConfig, got ModelConfig$"):
        Sub(ModelConfig())


def test_per_item_normal_draws():
    """Without a share: the global RNG. Under a share: the global batch's draw from the share's generator, this
    process's rows kept (videos and queries by their own starts); two processes' rows make one process's draw."""
    torch.manual_seed(5)
    a = per_item_normal("videos", 3, 2)
    torch.manual_seed(5)
    assert torch.equal(a, torch.randn(3, 2))

    def gen():
        return torch.Generator().manual_seed(11)

    whole = torch.randn((6, 4), generator=gen())
    queries = torch.randn((5, 4), generator=gen())
    torch.manual_seed(0)
    with sharing(BatchShare(gen(), video_start=2, videos=6, query_start=1, queries=5)):
        assert torch.equal(per_item_normal("videos", 3, 4), whole[2:5])
    with sharing(BatchShare(gen(), video_start=2, videos=6, query_start=1, queries=5)):
        assert torch.equal(per_item_normal("queries", 2, 4), queries[1:3])
    with sharing(BatchShare(gen())):  # the whole batch in this process
        assert torch.equal(per_item_normal("videos", 6, 4), whole)
    parts = []
    for start in (0, 3):
        with sharing(BatchShare(gen(), video_start=start, videos=6)):
            parts.append(per_item_normal("videos", 3, 4))
    assert torch.equal(torch.cat(parts), whole)
    torch.manual_seed(5)
    assert torch.equal(per_item_normal("videos", 3, 2), a)  # the share is gone after the block
    for share in (None, BatchShare(gen(), video_start=1, videos=4)):
        with sharing(share):
            d = per_item_normal("videos", 2, 3, dtype=torch.float64)
            assert d.dtype == torch.float64 and d.shape == (2, 3)
            m = per_item_normal("videos", 2, 3, device="meta")  # the device is passed on (meta: no CUDA needed)
            assert m.device.type == "meta" and m.shape == (2, 3)


def test_max_similarity_scores_blocks_hold_at_most_score_block_cosines(monkeypatch):
    """Videos are scored in blocks of as many as fit SCORE_BLOCK cosines (N queries x M rows x the longest set's
    L tokens a video; at least one video a block): the bound on the memory of evaluation and search."""
    sizes = []
    block = base._max_similarity_block

    def spy(q, v, layouts):
        sizes.append(len(v))
        return block(q, v, layouts)

    monkeypatch.setattr(base, "_max_similarity_block", spy)
    layouts = {"clip": TokenLayout(4), "frame": TokenLayout(128, ragged=True)}
    q = QueryRepr(torch.randn(1024, 1, 3), torch.ones(1024, 1), ("frame",))
    v = VideoRepr({"clip": TokenSet(torch.randn(300, 4, 3)), "frame": TokenSet(torch.randn(300, 128, 3))})
    assert base.SCORE_BLOCK == 1 << 24  # 64 MB of float32 cosines
    assert max_similarity_scores(q, v, layouts)["frame"].shape == (1024, 300)
    assert sizes == [128, 128, 44]  # 2^24 // (1024 x 1 x 128)
    for score_block, want in ((72, [2, 1]), (40, [1, 1, 1]), (36 * 3, [3])):  # 2 x 3 x 6 = 36 cosines a video
        sizes.clear()
        monkeypatch.setattr(base, "SCORE_BLOCK", score_block)
        q, v, layouts = case(0, dim=8)
        torch.testing.assert_close(max_similarity_scores(q, v, layouts)["frame"].double(),
                                   by_hand(q, v, layouts)["frame"], atol=1e-6, rtol=0)
        assert sizes == want, score_block
    sizes.clear()
    monkeypatch.setattr(base, "SCORE_BLOCK", 2)  # one query, one row, one token: 2 videos a block
    one = VideoRepr({"clip": TokenSet(torch.randn(3, 1, 2))})
    max_similarity_scores(QueryRepr(torch.randn(1, 1, 2), torch.ones(1, 1), ("clip",)), one, {"clip": TokenLayout(1)})
    assert sizes == [2, 1]
