"""The evaluator against a by-hand evaluation (each video and query encoded alone from its raw features, the score
matrix ranked in numpy), fast and in process; also what `make mutate` runs on prvr.eval.evaluator and metrics."""

import re
import threading

import h5py
import numpy as np
import pytest
import torch

from prvr import dist
from prvr.data.datasets import Batch, SplitIndex
from prvr.data.layout import DatasetLayout, read_captions, video_id_of
from prvr.data.preprocess import clip_grid, frame_sequence, query_tokens
from prvr.errors import DataError, NonFiniteError
from prvr.eval import evaluator
from prvr.eval.evaluator import _encode_share, evaluate, rank_queries, save_scores, share_of, video_batch
from prvr.eval.metrics import ranks_from_scores, recalls
from prvr.models import build_model
from prvr.models.base import QueryRepr, TokenSet, VideoRepr
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


def by_hand(layout: DatasetLayout, model, split="test", videos=None):
    """Scores (N, V), ranks, query and video ids; `videos`: only these videos and their captions."""
    caps = read_captions(layout.caption_file(split))
    if videos is not None:
        caps = [(c, t) for c, t in caps if video_id_of(c) in videos]
    vids = list(dict.fromkeys(video_id_of(c) for c, _ in caps))
    cfg = model.cfg  # the model's input sizes
    with h5py.File(layout.feature_hdf5) as f, h5py.File(layout.query_feature_file) as qf, torch.no_grad():
        videos = []
        for v in vids:
            raw = f[v][...]
            fr = torch.from_numpy(frame_sequence(raw, cfg.max_ctx_l))[None]
            videos.append(model.encode_videos(Batch(clip=torch.from_numpy(clip_grid(raw, cfg.map_size))[None],
                                                    frames=fr, frame_mask=torch.ones(fr.shape[:2]))))
        rows = []
        for c, _ in caps:
            t = torch.from_numpy(query_tokens(qf[c][...], cfg.max_desc_l))[None]
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
    scores = torch.zeros(3, 5)
    scores[0, 1], scores[2, 4] = float("nan"), float("inf")
    with pytest.raises(NonFiniteError, match=r"^2 scores are NaN or Inf; refusing to rank them$"):
        ranks_from_scores(scores, torch.zeros(3, dtype=torch.long))


def test_rank_queries_names_the_first_non_finite_score():
    """A NaN query row in the second chunk: refused, naming the count, the query and the video (ids or #index)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    v = VideoRepr({"clip": TokenSet(torch.randn(6, 32, 32)),
                   "frame": TokenSet(torch.randn(6, 128, 32), (torch.arange(128) < 40).float().expand(6, -1))})
    rows = torch.randn(7, 32)
    rows[5] = float("nan")
    q = QueryRepr.single(rows, ("clip", "frame"))
    gt = torch.zeros(7, dtype=torch.long)
    ids = dict(query_ids=[f"q{i}" for i in range(7)], video_ids=[f"v{i}" for i in range(6)])
    for kw, q_name, v_name in ((ids, "q5", "v0"), ({}, "#5", "#0")):
        with pytest.raises(NonFiniteError, match=f"^{re.escape(non_finite_message(6, q_name, v_name, 'nan'))}$"):
            rank_queries(model, q, v, gt, chunk=4, **kw)


def non_finite_message(count, query, video, value):
    return (f"{count} non-finite scores, e.g. query {query!r} against video {video!r} is {value}: the model's weights "
            "or outputs are not finite; nothing was ranked")


def test_evaluate_under_bf16_autocast_scores_in_float32(case):
    """amp: encoded under bf16, scored in float32, close to the float32 evaluation (measured 1.7e-3 here)."""
    layout, model = case
    full = evaluate(model, layout, "test", keep_scores=True)
    half = evaluate(model, layout, "test", keep_scores=True, amp=True)
    assert half.scores.dtype == np.float32 and half.query_ids == full.query_ids
    np.testing.assert_allclose(half.scores, full.scores, atol=0.01, rtol=0)
    assert not np.array_equal(half.scores, full.scores)  # it really ran in bf16


# --- what `make mutate` found untested in prvr.eval.evaluator
def perturbed(cfg):
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def test_evaluate_reads_items_at_the_models_input_sizes(case):
    """A model with 16 clip cells, 20 frames and 5 caption tokens (the data have 10-149 frames, 8+ tokens): the
    evaluation reads every video and caption at those sizes, as the by-hand evaluation does."""
    layout, _ = case
    model = perturbed(tiny_model_config(map_size=16, max_ctx_l=20, max_desc_l=5))
    scores, ranks, qids, vids = by_hand(layout, model)
    res = evaluate(model, layout, "test", batch_videos=3, batch_queries=4, keep_scores=True)
    assert res.query_ids == qids and res.video_ids == vids
    np.testing.assert_allclose(res.scores, scores, atol=1e-6, rtol=0)
    assert res.ranks.tolist() == ranks.tolist()


def test_evaluate_a_given_index(case):
    """`index` (e.g. from `screen_split`): only its videos and queries are read, scored and ranked; an index
    without queries is refused, naming the caption file."""
    layout, model = case
    whole = SplitIndex.from_layout(layout, "test")
    keep = [whole.video_ids[i] for i in (1, 4, 6)]
    qs = [(q, keep.index(whole.video_ids[v])) for q, v in zip(whole.query_ids, whole.labels, strict=True)
          if whole.video_ids[v] in keep]
    index = SplitIndex([q for q, _ in qs], keep, [v for _, v in qs])
    scores, ranks, qids, vids = by_hand(layout, model, videos=keep)
    assert vids == keep and qids == index.query_ids and 3 < len(qids) < len(whole.query_ids)
    res = evaluate(model, layout, "test", batch_videos=2, batch_queries=3, keep_scores=True, index=index)
    assert res.query_ids == qids and res.video_ids == vids and res.scores.shape == (len(qids), 3)
    np.testing.assert_allclose(res.scores, scores, atol=1e-6, rtol=0)
    assert res.ranks.tolist() == ranks.tolist()
    empty = f"^{re.escape(str(layout.caption_file('test')))}: no usable captions to evaluate$"
    with pytest.raises(DataError, match=empty):
        evaluate(model, layout, "test", index=SplitIndex([], [], []))


def test_evaluate_checks_every_item_against_the_models_widths(case):
    """Features of another width than the model's are refused as they are read, naming the file and the item."""
    layout, _ = case
    hint = " (fix the data, or pass --skip-bad to leave such items out)"
    index = SplitIndex.from_layout(layout, "test")
    wide = build_model(tiny_model_config(visual_dim=50)).eval()
    msg = f"{layout.feature_hdf5}: video {index.video_ids[0]!r} has dim 48, expected 50{hint}"
    with pytest.raises(DataError, match=f"^{re.escape(msg)}$"):
        evaluate(wide, layout, "test")
    wide = build_model(tiny_model_config(text_dim=41)).eval()
    msg = f"{layout.query_feature_file}: caption {index.query_ids[0]!r} has dim 40, expected 41{hint}"
    with pytest.raises(DataError, match=f"^{re.escape(msg)}$"):
        evaluate(wide, layout, "test")


def test_video_batch():
    model = build_model(tiny_model_config())
    assert model.inference_videos == 0 and video_batch(model, 7) == 7
    model.inference_videos = 3
    assert video_batch(model, 7) == 3 and video_batch(model, 2) == 2 and video_batch(model, 3) == 3


def test_evaluate_reads_in_the_batches_workers_and_device_asked_for(case, monkeypatch):
    """The loaders get the batch sizes (videos: at most the model's `inference_videos`) and worker count asked
    for (defaults 100, 50 and 0), and every batch is moved to `device` (checked on what is asked: no CUDA here)."""
    layout, model = case
    loaders, moved, seen = [], [], []

    class Loader(evaluator.DataLoader):
        def __init__(self, dataset, **kw):
            loaders.append((type(dataset).__name__, len(dataset), kw.get("batch_size"), kw.get("num_workers")))
            super().__init__(dataset, **{**kw, "num_workers": 0})  # workers asked for, none started

    to = Batch.to

    def batch_to(self, device):
        moved.append(device)
        return to(self, device)

    encode = model.encode_videos

    def encode_videos(batch):
        seen.append(batch.clip.shape[0])
        return encode(batch)

    monkeypatch.setattr(evaluator, "DataLoader", Loader)
    monkeypatch.setattr(Batch, "to", batch_to)
    ref = evaluate(model, layout, "test", keep_scores=True)
    assert loaders == [("EvalVideos", 8, 100, 0), ("EvalQueries", 19, 50, 0)] and moved == ["cpu", "cpu"]
    loaders.clear(), moved.clear()
    monkeypatch.setattr(model, "encode_videos", encode_videos)
    monkeypatch.setattr(model, "inference_videos", 3)
    res = evaluate(model, layout, "test", batch_videos=5, batch_queries=4, num_workers=2, device="cpu",
                   keep_scores=True)
    assert loaders == [("EvalVideos", 8, 3, 2), ("EvalQueries", 19, 4, 2)] and seen == [3, 3, 2]
    assert moved == ["cpu"] * 8  # 3 video batches, 5 query batches
    np.testing.assert_allclose(res.scores, ref.scores, atol=1e-6, rtol=0)


TQDM_LINE = r"{what}: +\d+%\|[^|\r\n]*\| *\d+/(\d+) \["


def bar_totals(err: str, what: str) -> set[int]:
    return {int(n) for n in re.findall(TQDM_LINE.format(what=what), err)}


def test_progress_bars_only_when_asked_and_on_the_main_process(case, capsys, monkeypatch):
    layout, model = case
    evaluate(model, layout, "test", batch_videos=3, batch_queries=4)
    assert capsys.readouterr().err == ""
    evaluate(model, layout, "test", batch_videos=3, batch_queries=4, progress=True)
    err = capsys.readouterr().err
    assert bar_totals(err, "videos") == {3} and bar_totals(err, "queries") == {5}  # 8 videos by 3, 19 queries by 4
    assert re.search(r"videos: 100%\|[^\r\n]*\| 3/3 \[[^\r\n]*(batch/s|s/batch)\]", err)
    monkeypatch.setattr(dist, "rank", lambda: 1)  # not the main process
    evaluate(model, layout, "test", batch_videos=3, batch_queries=4, progress=True)
    assert capsys.readouterr().err == ""


def test_evaluate_names_a_non_finite_score_by_its_ids(case, monkeypatch):
    layout, model = case
    score = model.score

    def nan_at_2_5(q, v):
        s = score(q, v).clone()
        s[2, 5] = float("nan")
        return s

    monkeypatch.setattr(model, "score", nan_at_2_5)
    index = SplitIndex.from_layout(layout, "test")
    msg = non_finite_message(1, index.query_ids[2], index.video_ids[5], "nan")
    with pytest.raises(NonFiniteError, match=f"^{re.escape(msg)}$"):
        evaluate(model, layout, "test")


# --- sharded evaluation (torchrun), in process: ranks are threads, the gather a barrier
def test_share_of(monkeypatch):
    """One process: everything. Several: whole batches of the single process when each rank gets one, else an
    even split."""
    assert share_of(10, 4) == (0, 10)
    monkeypatch.setattr(dist, "world", lambda: 3)

    def shares(n, batch):
        out = []
        for r in range(3):
            monkeypatch.setattr(dist, "rank", lambda r=r: r)
            out.append(share_of(n, batch))
        return out

    assert shares(10, 4) == [(0, 4), (4, 8), (8, 10)]  # 3 batches of 4 for 3 ranks (an even split: 4, 3, 3)
    assert shares(9, 4) == [(0, 4), (4, 8), (8, 9)]
    assert shares(8, 4) == [(0, 3), (3, 6), (6, 8)]  # 2 batches for 3 ranks: even
    assert shares(4, 3) == [(0, 2), (2, 3), (3, 4)]
    assert shares(2, 50) == [(0, 1), (1, 2), (2, 2)]


def test_encode_share():
    """The whole dataset is encoded as it is; a share as a Subset of its items; an empty share encodes item 0 and
    keeps none of it (its shapes are what the gather needs)."""
    calls = []

    def encode(model, dataset, batch, device, num_workers, progress):
        items = [dataset[i] for i in range(len(dataset))]
        calls.append((model, items, batch, device, num_workers, progress))
        return VideoRepr({"clip": TokenSet(torch.tensor(items, dtype=torch.float32).reshape(-1, 1, 2))})

    data = [(10.0, 0.5), (11.0, 0.5), (12.0, 0.5), (13.0, 0.5), (14.0, 0.5)]
    for (start, stop), want in (((0, 5), data), ((2, 5), data[2:]), ((1, 5), data[1:]), ((0, 2), data[:2])):
        calls.clear()
        out = _encode_share(encode, "m", data, start, stop, 7, "dev", 2, True)
        assert calls == [("m", want, 7, "dev", 2, True)]
        assert out.sets["clip"].tokens.reshape(-1, 2).tolist() == [list(x) for x in want]
    calls.clear()
    out = _encode_share(encode, "m", data, 3, 3, 7, "dev", 0, False)
    assert calls == [("m", data[:1], 7, "dev", 0, False)] and out.sets["clip"].tokens.shape == (0, 1, 2)


def as_ranks(world, fn, monkeypatch):
    """fn() in `world` threads, each a rank of a sharded job: `dist` answers per thread, and `gather_cat` joins
    the ranks' tensors in rank order (a barrier, as the collective is). -> each rank's result."""
    local = threading.local()
    slots = [None] * world
    barrier = threading.Barrier(world, timeout=60)

    def gather_cat(t, dim=0, grad=False):
        slots[local.rank] = t
        barrier.wait()
        out = torch.cat(slots, dim=dim)
        barrier.wait()
        return out

    monkeypatch.setattr(dist, "rank", lambda: local.rank)
    monkeypatch.setattr(dist, "world", lambda: world)
    monkeypatch.setattr(dist, "gather_cat", gather_cat)
    results, errors = [None] * world, []

    def run(r):
        local.rank = r
        try:
            results[r] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below; the other ranks must not wait for it
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def assert_same_result(got, want):
    assert got.query_ids == want.query_ids and got.video_ids == want.video_ids
    assert got.ranks.dtype == torch.long and got.ranks.tolist() == want.ranks.tolist()
    assert got.metrics == pytest.approx(want.metrics)
    if want.scores is None:
        assert got.scores is None
    else:
        assert got.scores.dtype == np.float32 and got.scores.shape == want.scores.shape
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6, rtol=0)


def test_sharded_evaluation_is_the_single_process_one(case, monkeypatch, capsys):
    """Two ranks (videos 0-5 and 6-7 in batches of 3, queries 0-11 and 12-18 in batches of 4): every rank ends
    with the single process's ranks, scores and metrics; only rank 0 shows progress (its 2 and 3 batches)."""
    layout, model = case
    kw = dict(batch_videos=3, batch_queries=4, keep_scores=True)
    want = evaluate(model, layout, "test", **kw)
    capsys.readouterr()
    got = as_ranks(2, lambda: evaluate(model, layout, "test", progress=True, **kw), monkeypatch)
    err = capsys.readouterr().err
    assert bar_totals(err, "videos") == {2} and bar_totals(err, "queries") == {3}
    for res in got:
        assert_same_result(res, want)
    got = as_ranks(2, lambda: evaluate(model, layout, "test", batch_videos=3), monkeypatch)
    for res in got:
        assert res.scores is None and res.ranks.tolist() == want.ranks.tolist()


def test_sharded_evaluation_with_empty_shares(case, monkeypatch):
    """Three ranks, two videos and two queries: rank 2 holds neither (it encodes one of each to give the gather
    its shapes, and keeps none) and still ends with everyone's result."""
    layout, model = case
    whole = SplitIndex.from_layout(layout, "test")
    first = [q for q, v in zip(whole.query_ids, whole.labels, strict=True) if v == 0][0]
    second = [q for q, v in zip(whole.query_ids, whole.labels, strict=True) if v == 1][0]
    index = SplitIndex([first, second], whole.video_ids[:2], [0, 1])
    want = evaluate(model, layout, "test", keep_scores=True, index=index)
    assert want.scores.shape == (2, 2)
    got = as_ranks(3, lambda: evaluate(model, layout, "test", keep_scores=True, index=index), monkeypatch)
    for res in got:
        assert_same_result(res, want)
