"""The evaluator against a by-hand evaluation (each video and query encoded alone from its raw features, the score
matrix ranked in numpy), fast and in process; also what `make mutate` runs on prvr.eval.evaluator and metrics."""

import h5py
import numpy as np
import pytest
import torch

from prvr.data.datasets import Batch
from prvr.data.layout import DatasetLayout, read_captions, video_id_of
from prvr.data.preprocess import clip_grid, frame_sequence, query_tokens
from prvr.eval.evaluator import evaluate, rank_queries, save_scores
from prvr.eval.metrics import ranks_from_scores, recalls
from prvr.models import build_model
from prvr.synth.synthetic import write_synthetic
from tests.conftest import tiny_model_config


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    layout = write_synthetic(tmp_path_factory.mktemp("eval-core"), "tiny", scale=0.5)  # 8 test videos
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return layout, model


def by_hand(layout: DatasetLayout, model, split="test"):
    caps = read_captions(layout.caption_file(split))
    vids = list(dict.fromkeys(video_id_of(c) for c, _ in caps))
    with h5py.File(layout.feature_hdf5) as f, h5py.File(layout.query_feature_file) as qf, torch.no_grad():
        videos = []
        for v in vids:
            raw = f[v][...]
            fr = torch.from_numpy(frame_sequence(raw))[None]
            videos.append(model.encode_videos(Batch(clip=torch.from_numpy(clip_grid(raw))[None], frames=fr,
                                                    frame_mask=torch.ones(fr.shape[:2]))))
        rows = []
        for c, _ in caps:
            t = torch.from_numpy(query_tokens(qf[c][...]))[None]
            q = model.encode_queries(Batch(text=t, text_mask=torch.ones(t.shape[:2])))
            rows.append(torch.cat([model.score(q, v) for v in videos], dim=1))
    scores = torch.cat(rows).numpy()  # (N, V)
    gt = np.array([vids.index(video_id_of(c)) for c, _ in caps])
    ranks = 1 + (scores > scores[np.arange(len(gt)), gt][:, None]).sum(1)
    return scores, ranks, [c for c, _ in caps], vids


def test_evaluate_equals_by_hand(case):
    layout, model = case
    scores, ranks, qids, vids = by_hand(layout, model)
    res = evaluate(model, layout, "test", batch_videos=3, batch_queries=4, keep_scores=True)
    assert res.query_ids == qids and res.video_ids == vids
    np.testing.assert_allclose(res.scores, scores, atol=1e-6, rtol=0)  # measured 1.2e-7
    assert res.ranks.tolist() == ranks.tolist() and len(set(ranks.tolist())) > 2
    for k in (1, 5, 10, 100):
        assert res.metrics[f"R@{k}"] == pytest.approx(100 * np.mean(ranks <= k))
    assert res.metrics["SumR"] == pytest.approx(sum(100 * np.mean(ranks <= k) for k in (1, 5, 10, 100)))
    assert evaluate(model, layout, "test").scores is None


def test_evaluate_restores_training_mode_and_chunks(case):
    layout, model = case
    model.train()
    try:
        res = evaluate(model, layout, "test", keep_scores=True)
        assert model.training
    finally:
        model.eval()
    ref = evaluate(model, layout, "test", keep_scores=True)
    np.testing.assert_array_equal(res.scores, ref.scores)  # evaluated in eval mode, whatever the caller's mode


def test_rank_queries_chunks_and_ties():
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    from prvr.models.base import QueryRepr, TokenSet, VideoRepr

    v = VideoRepr({"clip": TokenSet(torch.randn(6, 32, 32)),
                   "frame": TokenSet(torch.randn(6, 128, 32), (torch.arange(128) < 40).float().expand(6, -1))})
    q = QueryRepr.single(torch.randn(9, 32), ("clip", "frame"))
    gt = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2])
    full = model.score(q, v)
    ranks, kept = rank_queries(model, q, v, gt, chunk=2, keep_scores=True)
    np.testing.assert_allclose(kept, full.numpy(), atol=1e-6, rtol=0)
    assert ranks.tolist() == ranks_from_scores(full, gt).tolist()
    assert rank_queries(model, q, v, gt, chunk=1000)[1] is None
    s = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9]])
    assert ranks_from_scores(s, torch.tensor([1, 0])).tolist() == [1, 3]  # ties in the query's favour
    r = recalls(torch.tensor([1, 2, 6, 11, 101]), ks=(1, 5, 10, 100))
    assert r == pytest.approx({"R@1": 20.0, "R@5": 40.0, "R@10": 60.0, "R@100": 80.0, "SumR": 200.0})


def test_save_scores_is_float32_and_atomic(tmp_path):
    path = tmp_path / "s.npy"
    save_scores(path, np.arange(6, dtype=np.float64).reshape(2, 3))
    got = np.load(path)
    assert got.dtype == np.float32 and got.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert [p.name for p in tmp_path.iterdir()] == ["s.npy"]


def test_ranks_refuse_non_finite_scores_and_count_them():
    """A NaN would rank first: ranking refuses non-finite scores, in one line that counts them."""
    from prvr.errors import NonFiniteError

    scores = torch.zeros(3, 5)
    scores[0, 1], scores[2, 4] = float("nan"), float("inf")
    with pytest.raises(NonFiniteError, match=r"^2 scores are NaN or Inf; refusing to rank them$"):
        ranks_from_scores(scores, torch.zeros(3, dtype=torch.long))


def test_rank_queries_names_the_first_non_finite_score():
    """A NaN query row in the second chunk: refused, naming the count, the query and the video (ids or #index)."""
    from prvr.errors import NonFiniteError
    from prvr.models.base import QueryRepr, TokenSet, VideoRepr

    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    v = VideoRepr({"clip": TokenSet(torch.randn(6, 32, 32)),
                   "frame": TokenSet(torch.randn(6, 128, 32), (torch.arange(128) < 40).float().expand(6, -1))})
    rows = torch.randn(7, 32)
    rows[5] = float("nan")
    q = QueryRepr.single(rows, ("clip", "frame"))
    gt = torch.zeros(7, dtype=torch.long)
    ids = dict(query_ids=[f"q{i}" for i in range(7)], video_ids=[f"v{i}" for i in range(6)])
    with pytest.raises(NonFiniteError, match=r"^6 non-finite scores, e\.g\. query 'q5' against video 'v0' is nan: "):
        rank_queries(model, q, v, gt, chunk=4, **ids)
    with pytest.raises(NonFiniteError, match=r"^6 non-finite scores, e\.g\. query '#5' against video '#0' is nan: "):
        rank_queries(model, q, v, gt, chunk=4)


def test_evaluate_under_bf16_autocast_scores_in_float32(case):
    """amp: encoded under bf16, scored in float32, close to the float32 evaluation (measured 1.7e-3 here)."""
    layout, model = case
    full = evaluate(model, layout, "test", keep_scores=True)
    half = evaluate(model, layout, "test", keep_scores=True, amp=True)
    assert half.scores.dtype == np.float32 and half.query_ids == full.query_ids
    np.testing.assert_allclose(half.scores, full.scores, atol=0.01, rtol=0)
    assert not np.array_equal(half.scores, full.scores)  # it really ran in bf16
