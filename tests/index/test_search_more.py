"""Search in process against values computed by hand: a small index of planted tokens (no training, no data set;
MaxSim at equal widths, so a query is the normalised mean of its token rows) in shards of different sizes, scored
in numpy from the stored float16 tokens. Scores, per-set contributions and best tokens (fixed and ragged sets,
zero-scoring padding, several weighted rows per set), candidate subsets, hits in seconds, moments, several queries
at once, the ANN path's budget, the generic `model.score` path, and every refusal with its whole message. These are
also the tests `make mutate` runs on prvr.index.search (most of its behaviour is otherwise tested through CLI
subprocesses, which mutmut cannot map)."""

import re
import shutil

import numpy as np
import pytest
import torch

from prvr.errors import PrvrError
from prvr.index import search as search_mod
from prvr.index.ann import build_ann
from prvr.index.search import MAX_K, MAX_QUERY_CHARS, Hit, Retriever, check_query_text
from prvr.index.store import IndexError_, append_shard, create_index
from prvr.models import build_model
from prvr.models.base import QueryRepr, TokenLayout, VideoRepr, max_similarity_scores
from prvr.models.checkpoint import save_checkpoint
from prvr.models.presets import default_config

D = 8
LAYOUTS = {"clip": TokenLayout(4), "frame": TokenLayout(6, ragged=True, pads_score_zero=True)}
WEIGHTS = {"clip": 0.7, "frame": 0.3}
SHARDS = (23, 1, 30)  # 54 videos: more than MOMENT_HITS hits; a shard of one video


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def maxsim_config(dim=D, text_dim=None, weights=WEIGHTS):
    cfg = default_config("maxsim")
    m = cfg.model
    m.visual_dim, m.text_dim = dim, text_dim or dim
    m.map_size, m.max_ctx_l, m.max_desc_l = 4, 6, 5
    m.clip_weight, m.frame_weight = weights.get("clip", 0.0), weights.get("frame", 0.0)
    return cfg


def make_index(path, shards, layouts=LAYOUTS, weights=WEIGHTS, normalized=True, text_encoder=None, cfg=None):
    """shards: per shard a list of (video id, {set: (n, D) tokens}, meta). Returns the index path."""
    cfg = cfg or maxsim_config(weights=weights)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    path.mkdir(parents=True, exist_ok=True)
    ckpt = path / "model.ckpt"
    save_checkpoint(ckpt, model, cfg)
    index = path / "index"
    manifest = create_index(index, ckpt, cfg.to_dict(), layouts, weights, normalized, text_encoder)
    for videos in shards:
        manifest = append_shard(index, manifest, [v[0] for v in videos],
                                {s: [v[1][s] for v in videos] for s in layouts}, [v[2] for v in videos])
    return index


def video_meta(i, n):
    """Five kinds of meta, by i: frame times; duration only; no duration; nothing; frame times of the wrong
    length and a file path."""
    dur = 0.5 * n + 0.25 * (i % 3)
    kind = i % 5
    if kind == 0:
        return {"n_raw_frames": n, "duration": dur, "frame_times": [0.1 + 0.37 * f for f in range(n)]}
    if kind == 1:
        return {"n_raw_frames": n, "duration": dur}
    if kind == 2:
        return {"n_raw_frames": n}
    if kind == 3:
        return {}
    return {"n_raw_frames": n, "duration": dur, "frame_times": [0.0] * (n + 1), "file": f"/media/cam{i % 3}/v{i}.mp4"}


def random_shards(seed=0, sizes=SHARDS):
    rng = np.random.default_rng(seed)
    shards, i = [], 0
    for size in sizes:
        videos = []
        for _ in range(size):
            n = int(rng.integers(1, 15))
            count = min(n, 6) if size > 1 else 6  # the one-video shard: full, so its padding never scores
            n = max(n, count)
            tokens = {"clip": unit(rng.standard_normal((4, D))), "frame": unit(rng.standard_normal((count, D)))}
            videos.append((f"v{i:02d}", tokens, video_meta(i, n)))
            i += 1
        shards.append(videos)
    return shards


class Ref:
    """The index's videos in global order with their float16 tokens, scored in float64 by the formula of the module
    doc: per set s, sum over rows m aimed at s of max_l <w_s a_m q_m, token_l> (0 joins the max of a set whose
    padding scores zero, for a video with fewer tokens than its capacity); the best token is the first token that
    reaches the max of the row that contributes most."""

    def __init__(self, shards, layouts=LAYOUTS, weights=WEIGHTS):
        self.videos = [v for s in shards for v in s]
        self.ids = [v[0] for v in self.videos]
        self.layouts, self.weights = layouts, weights
        self.tokens = [{s: t.astype(np.float16).astype(np.float64) for s, t in v[1].items()} for v in self.videos]

    def scores(self, rows):
        """rows: [(unit vector, target set, a_m)] -> total (V,), {set: (V,)}, {set: (V,)} best tokens."""
        V = len(self.videos)
        total, sets, best = np.zeros(V), {}, {}
        for name, layout in self.layouts.items():
            w = self.weights.get(name, 0.0)
            mine = [np.asarray(q, np.float64) * w * a for q, t, a in rows if t == name and w * a > 0]
            sets[name], best[name] = np.zeros(V), np.zeros(V, np.int64)
            for v in range(V):
                if not mine:
                    continue
                sims = self.tokens[v][name] @ np.stack(mine).T  # (T, M)
                top = sims.max(0)
                if layout.pads_score_zero and len(sims) < layout.capacity:
                    top = np.maximum(top, 0.0)
                sets[name][v] = top.sum()
                best[name][v] = int(np.argmax(sims[:, int(np.argmax(top))]))
            total += sets[name]
        return total, sets, best


def qrepr(rows):
    """[(vector, target, a)] -> one normalised query of those rows."""
    return QueryRepr(torch.tensor(np.stack([unit(v) for v, _, _ in rows])[None], dtype=torch.float32),
                     torch.tensor([[a for _, _, a in rows]], dtype=torch.float32), tuple(t for _, t, _ in rows), True)


def single_rows(tokens, max_desc_l=5):
    """MaxSim's query of raw token rows: the normalised mean of the first max_desc_l normalised rows, at both sets."""
    q = unit(unit(tokens)[:max_desc_l].mean(0))
    return [(q, "clip", 1.0), (q, "frame", 1.0)]


def assert_scores(sc, want, ids=None):
    total, sets, best = want
    sel = slice(None) if ids is None else ids
    np.testing.assert_allclose(sc.total.numpy(), total[sel], rtol=0, atol=2e-6)
    assert set(sc.sets) == set(sets) and set(sc.tokens) == set(best)
    for name in sets:
        np.testing.assert_allclose(sc.sets[name].numpy(), sets[name][sel], rtol=0, atol=2e-6)
        assert sc.tokens[name].tolist() == best[name][sel].tolist(), name


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    shards = random_shards()
    index = make_index(tmp_path_factory.mktemp("hand"), shards)
    return index, Ref(shards), shards


@pytest.fixture(scope="module")
def rng_queries():
    rng = np.random.default_rng(1)
    return [unit(rng.standard_normal(D)) for _ in range(6)]


class WordsEncoder:
    """A text encoder stand-in: one token row per word (row i of the identity)."""

    def encode(self, texts):
        return [np.eye(D)[:len(t.split())] for t in texts]


TEXT_SPEC = {"kind": "hf", "id": "org/tiny-text"}


# ------------------------------------------------------------------------------------------------ construction
def test_retriever_reads_the_index(hand):
    index, ref, shards = hand
    r = Retriever(index)
    assert len(r) == 54 and r.ids == ref.ids and [len(s.ids) for s in r.shards] == list(SHARDS)
    assert r.weights == WEIGHTS and r.layouts == LAYOUTS and not r.exact_only and r.ann is None
    assert r.moment_set == "clip" and r.frame_set == "frame"
    assert r.text_encoder_loads == 0 and r.device == torch.device("cpu")
    assert r.video("v23") == {"video_id": "v23", **shards[1][0][2]}
    assert r.video("v30") == {"video_id": "v30", **shards[2][6][2]}
    with pytest.raises(PrvrError, match=r"^unknown video id 'v54'$"):
        r.video("v54")


def test_an_id_in_two_shards_is_refused(tmp_path):
    shards = random_shards(sizes=(2, 2))
    shards[1][1] = ("v00", *shards[1][1][1:])
    index = make_index(tmp_path, shards)
    with pytest.raises(IndexError_, match=f"^{index / 'manifest.json'}: a video id is stored in two shards$"):
        Retriever(index)


def test_shards_are_checked_against_the_layouts(tmp_path):
    """A video with more tokens than its set's capacity is refused where the shard is read."""
    rng = np.random.default_rng(3)
    videos = [("a", {"clip": unit(rng.standard_normal((4, D))), "frame": unit(rng.standard_normal((7, D)))}, {})]
    index = make_index(tmp_path, [videos])
    with pytest.raises(IndexError_, match=f"^{index / 'shard-00000'}: corrupt shard \\(token set 'frame': videos with "
                                          "7..7 tokens, expected 1..6\\)$"):
        Retriever(index)


def test_an_index_without_the_normalized_flag_scores_by_max_similarity(tmp_path):
    """An index written before the flag existed holds normalised tokens scored by max-similarity."""
    import json

    shards = random_shards(sizes=(3,))
    index = make_index(tmp_path, shards)
    manifest = json.loads((index / "manifest.json").read_text())
    del manifest["normalized"]
    (index / "manifest.json").write_text(json.dumps(manifest))
    r = Retriever(index)
    assert not r.exact_only
    q = unit(np.ones(D))
    assert_scores(r.scores(qrepr([(q, "clip", 1.0), (q, "frame", 1.0)])),
                  Ref(shards).scores([(q, "clip", 1.0), (q, "frame", 1.0)]))


def test_moment_and_frame_sets_follow_the_layouts(tmp_path):
    """The moment comes from the first fixed set (else the first ragged one), the best frame from the first ragged
    set (none without one)."""
    rng = np.random.default_rng(2)
    cases = [({"frame": TokenLayout(6, ragged=True), "clip": TokenLayout(4)}, "clip", "frame"),
             ({"frame": TokenLayout(6, ragged=True), "f2": TokenLayout(6, ragged=True)}, "frame", "frame"),
             ({"f2": TokenLayout(6, ragged=True), "frame": TokenLayout(6, ragged=True)}, "f2", "f2"),
             ({"clip": TokenLayout(4)}, "clip", None),
             ({"c2": TokenLayout(4), "clip": TokenLayout(4)}, "c2", None)]
    for i, (layouts, moment, frame) in enumerate(cases):
        tokens = {s: unit(rng.standard_normal((4, D))) for s in layouts}
        index = make_index(tmp_path / str(i), [[("a", tokens, {})]], layouts, {s: 1.0 for s in layouts})
        r = Retriever(index)
        assert (r.moment_set, r.frame_set) == (moment, frame), layouts


def test_token_width_is_checked(tmp_path):
    rng = np.random.default_rng(3)
    videos = [("a", {"clip": unit(rng.standard_normal((4, 6))), "frame": unit(rng.standard_normal((2, 6)))}, {})]
    index = make_index(tmp_path / "w", [videos])
    shard = index / "shard-00000"
    with pytest.raises(IndexError_, match=f"^{shard}: token set 'clip' is 6-d, the index's model makes 8-d query "
                                          "vectors$"):
        Retriever(index)
    # a model scored through model.score is not checked; nor is an index without shards
    assert len(Retriever(make_index(tmp_path / "x", [videos], normalized=False))) == 1
    r = Retriever(make_index(tmp_path / "e", []))
    assert len(r) == 0 and r.ids == [] and r.shards == []


def test_token_width_is_that_of_the_query_vectors(tmp_path):
    """With a text width other than the visual one, the query vectors have the visual width."""
    rng = np.random.default_rng(3)
    videos = [("a", {"clip": unit(rng.standard_normal((4, D))), "frame": unit(rng.standard_normal((2, D)))}, {})]
    r = Retriever(make_index(tmp_path, [videos], cfg=maxsim_config(text_dim=5)))
    assert len(r) == 1 and r.cfg.model.text_dim == 5


# ------------------------------------------------------------------------------------------------ scores
def test_scores_by_hand(hand, rng_queries):
    index, ref, _ = hand
    r = Retriever(index)
    for q in rng_queries:
        rows = [(q, "clip", 1.0), (q, "frame", 1.0)]
        assert_scores(r.scores(qrepr(rows)), ref.scores(rows))


def test_scores_of_several_weighted_rows(hand, rng_queries):
    """Several rows per set, each with its weight a_m (a zero-weight row dropped): the set's score sums the rows,
    the best token is that of the row that contributes most."""
    index, ref, _ = hand
    r = Retriever(index)
    q = rng_queries
    rows = [(q[0], "clip", 0.5), (q[1], "frame", 2.0), (q[2], "clip", 1.5), (q[3], "frame", 0.0),
            (q[4], "frame", 0.25)]
    want = ref.scores(rows)
    assert_scores(r.scores(qrepr(rows)), want)
    # the clip row of weight 1.5 decides some moments, the one of 0.5 others
    clip_rows = [q[0] * 0.35, q[2] * 1.05]
    deciding = {int(np.argmax([(ref.tokens[v]["clip"] @ c).max() for c in clip_rows])) for v in range(len(ref.ids))}
    assert deciding == {0, 1}
    scaled = r.scaled_rows(qrepr(rows))
    assert set(scaled) == {"clip", "frame"} and scaled["clip"].shape == (2, D) and scaled["frame"].shape == (2, D)
    np.testing.assert_allclose(scaled["frame"].numpy(), np.stack([q[1] * 0.6, q[4] * 0.075]), atol=1e-7)
    assert scaled["clip"].dtype == torch.float32


def test_padding_scores_zero_only_where_the_layout_says(hand, rng_queries):
    """A video with fewer frames than the capacity scores at least 0 on frames when its padding scores zero; a full
    video, and any video of a set whose padding never scores, keeps its negative best."""
    index, ref, _ = hand
    r = Retriever(index)
    q = rng_queries[0]
    rows = [(q, "clip", 1.0), (q, "frame", 1.0)]
    sc = r.scores(qrepr(rows))
    raw = np.array([(ref.tokens[v]["frame"] @ q).max() * 0.3 for v in range(len(ref.ids))])
    short = np.array([len(t["frame"]) < 6 for t in ref.tokens])
    assert (raw[short] < 0).any() and (raw[~short] < 0).any()  # both kinds occur
    np.testing.assert_allclose(sc.sets["frame"].numpy(), np.where(short, np.maximum(raw, 0), raw), atol=2e-6)
    # the best token is still the best real frame, also where the score is the padding's 0
    assert sc.tokens["frame"].tolist() == [int(np.argmax(ref.tokens[v]["frame"] @ q)) for v in range(len(ref.ids))]


def test_padding_that_never_scores(tmp_path, rng_queries):
    layouts = {"clip": TokenLayout(4), "frame": TokenLayout(6, ragged=True)}
    shards = random_shards(sizes=(5, 9))
    r = Retriever(make_index(tmp_path, shards, layouts))
    ref = Ref(shards, layouts)
    short = [v for v in range(14) if len(ref.tokens[v]["frame"]) < 4]
    for q in [-unit(ref.tokens[v]["frame"].sum(0)) for v in short[:3]]:  # their frames all score below 0
        rows = [(q, "clip", 1.0), (q, "frame", 1.0)]
        want = ref.scores(rows)
        assert (want[1]["frame"][short[:3]] < 0).any()
        assert_scores(r.scores(qrepr(rows)), want)
        assert_scores(r.scores(qrepr(rows), np.array(short[:1])), want, np.array(short[:1]))


def test_candidate_subsets_by_hand(hand, rng_queries):
    """Sorted global indices across shards (none of the middle shard, or only it) score as in the full scan."""
    index, ref, _ = hand
    r = Retriever(index)
    rows = [(rng_queries[1], "clip", 1.0), (rng_queries[1], "frame", 0.5)]
    want = ref.scores(rows)
    for subset in ([0, 5, 22, 24, 30, 53], [23], [0, 23, 53], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 40],
                   list(range(54))):
        sc = r.scores(qrepr(rows), np.array(subset, dtype=np.int64))
        assert_scores(sc, want, np.array(subset))
    empty = r.scores(qrepr(rows), np.array([], dtype=np.int64))
    assert empty.total.shape == (0,) and empty.sets == {} and empty.tokens == {}


def test_padding_scores_zero_in_a_subset_of_equal_lengths(hand, rng_queries, tmp_path):
    """Scored alone (a one-video candidate subset, a `within` filter), or in a shard whose videos all have the same
    number of frames below the capacity, a short video's negative frame max is still lifted to the padding's 0, as
    in the full scan and in model.score (a bug these tests found: the equal-length path skipped it; fixed)."""
    index, ref, _ = hand
    r = Retriever(index)
    q = rng_queries[0]
    rows = [(q, "clip", 1.0), (q, "frame", 1.0)]
    want = ref.scores(rows)
    neg = [v for v in range(len(ref.ids)) if len(ref.tokens[v]["frame"]) < 6
           and (ref.tokens[v]["frame"] @ q).max() < 0]
    assert neg
    for v in neg:
        assert_scores(r.scores(qrepr(rows), np.array([v])), want, np.array([v]))
        assert r.search_repr(qrepr(rows), 1, within=np.array([v]))[0].score == pytest.approx(want[0][v], abs=2e-6)
    rng = np.random.default_rng(6)
    shards = [[(f"s{i}", {"clip": unit(rng.standard_normal((4, D))), "frame": unit(rng.standard_normal((3, D)))},
                {}) for i in range(5)] for _ in range(1)]
    same = Ref(shards)
    r = Retriever(make_index(tmp_path, shards))
    for q in [-unit(t["frame"].sum(0)) for t in same.tokens[:2]]:
        rows = [(q, "clip", 1.0), (q, "frame", 1.0)]
        want = same.scores(rows)
        assert (want[1]["frame"] == 0).any()
        assert_scores(r.scores(qrepr(rows)), want)
        many = r.scores_many(qrepr(rows))
        np.testing.assert_allclose(many.sets["frame"][:, 0].numpy(), want[1]["frame"], atol=2e-6)


def test_scoring_warns_nothing(hand, rng_queries, monkeypatch):
    """Scoring writes into its buffers as they are (a tensor resized behind an `out=` would warn)."""
    import warnings

    index, ref, _ = hand
    r = Retriever(index)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for chunk in (8192, 5):
            monkeypatch.setattr(search_mod, "SCORE_CHUNK", chunk)
            for rows in ([(rng_queries[0], "clip", 1.0), (rng_queries[0], "frame", 1.0)],
                         [(rng_queries[0], "clip", 1.0), (rng_queries[1], "clip", 1.0), (rng_queries[2], "frame", 1.0),
                          (rng_queries[3], "frame", 1.0)]):
                assert_scores(r.scores(qrepr(rows)), ref.scores(rows))
                r.scores(qrepr(rows), np.array([3, 23, 40]))
                r.scores_many(qrepr(rows))


def test_scores_in_chunks(hand, rng_queries, monkeypatch):
    """Token rows are converted a few at a time: the chunk size changes nothing (several rows and one)."""
    index, ref, _ = hand
    r = Retriever(index)
    monkeypatch.setattr(search_mod, "SCORE_CHUNK", 3)
    for rows in ([(rng_queries[2], "clip", 1.0), (rng_queries[2], "frame", 1.0)],
                 [(rng_queries[2], "clip", 1.0), (rng_queries[3], "clip", 0.5), (rng_queries[4], "frame", 1.0),
                  (rng_queries[5], "frame", 2.0)]):
        want = ref.scores(rows)
        assert_scores(r.scores(qrepr(rows)), want)
        subset = np.array([0, 2, 7, 23, 31, 40, 41])
        assert_scores(r.scores(qrepr(rows), subset), want, subset)


def test_a_set_without_rows_or_weight_scores_zero(tmp_path, rng_queries):
    """Rows aimed at no set of the index, a set without a score weight: 0 and token 0 for that set."""
    shards = random_shards(sizes=(4, 3))
    weights = {"clip": 0.7}
    r = Retriever(make_index(tmp_path, shards, weights=weights, cfg=maxsim_config(weights=WEIGHTS)))
    ref = Ref(shards, weights=weights)
    q = rng_queries[0]
    for rows in ([(q, "clip", 1.0), (q, "frame", 1.0)], [(q, "clip", 1.0)], [(q, "clip", 1.0), (q, "other", 1.0)]):
        want = ref.scores(rows)
        sc = r.scores(qrepr(rows))
        assert_scores(sc, want)
        assert sc.sets["frame"].tolist() == [0.0] * 7 and sc.tokens["frame"].tolist() == [0] * 7
        assert sc.tokens["frame"].dtype == torch.long
        subset = np.array([1, 4, 6])
        part = r.scores(qrepr(rows), subset)
        assert_scores(part, want, subset)
        assert part.sets["frame"].tolist() == [0.0] * 3 and part.tokens["frame"].tolist() == [0] * 3
    rows = [(q, "clip", 1.0), (q, "frame", 1.0)]
    many = r.scores_many(qrepr(rows))
    np.testing.assert_allclose(many.total[:, 0].numpy(), ref.scores(rows)[0], atol=2e-6)
    assert many.sets["frame"].tolist() == [[0.0]] * 7 and many.tokens["frame"].tolist() == [[0]] * 7
    r2 = Retriever(make_index(tmp_path / "b", shards))
    assert_scores(r2.scores(qrepr([(q, "frame", 1.0)])), Ref(shards).scores([(q, "frame", 1.0)]))


def test_scores_many_of_a_query_without_rows_for_a_set(tmp_path, rng_queries):
    """A query with no row aimed at a set: that set scores 0 with token 0 (a bug these tests found: the (N, 0, D)
    rows could not be reshaped; fixed)."""
    shards = random_shards(sizes=(4, 3))
    r = Retriever(make_index(tmp_path, shards))
    q = rng_queries[0]
    many = r.scores_many(qrepr([(q, "frame", 1.0)]))
    want = Ref(shards).scores([(q, "frame", 1.0)])
    np.testing.assert_allclose(many.total[:, 0].numpy(), want[0], atol=2e-6)
    assert many.sets["clip"].tolist() == [[0.0]] * 7 and many.tokens["clip"].tolist() == [[0]] * 7
    assert many.tokens["clip"].dtype == torch.long


def test_non_finite_scores_are_refused(hand, rng_queries):
    index, ref, _ = hand
    r = Retriever(index)
    rows = [(rng_queries[0], "clip", 1.0), (rng_queries[0], "frame", 1.0)]
    bad = qrepr(rows)
    bad.vectors[0, :, 3] = float("nan")
    msg = f"^{index.name}: non-finite scores \\(the index or the model is corrupt\\)$"
    counts = np.array([len(t["frame"]) for t in ref.tokens])
    for videos in (None, np.array([0, 1, 2, 30])):  # scores as such: NaN, and still a real token of each video
        sc = r.scores(bad, videos)
        assert torch.isnan(sc.total).all() and torch.isnan(sc.sets["frame"]).all()
        tokens = sc.tokens["frame"].numpy()
        assert ((tokens >= 0) & (tokens < (counts if videos is None else counts[videos]))).all()
    with pytest.raises(PrvrError, match=msg):
        r.search_repr(bad, 3, exact=True)
    with pytest.raises(PrvrError, match=msg):
        r.scores_many(bad)
    inf = qrepr(rows)
    inf.weights[0, 1] = float("inf")
    with pytest.raises(PrvrError, match=msg):
        r.search_repr(inf, 3)
    with pytest.raises(PrvrError, match=msg):
        r.scores_many(inf)


# ------------------------------------------------------------------------------------------------ search
def test_search_repr_ranks_by_hand(hand, rng_queries):
    index, ref, _ = hand
    r = Retriever(index)
    for q in rng_queries[:3]:
        rows = [(q, "clip", 1.0), (q, "frame", 1.0)]
        total, sets, best = ref.scores(rows)
        order = np.argsort(-total, kind="stable")
        for k in (1, 7, 54):
            hits = r.search_repr(qrepr(rows), k)
            assert [h.video_id for h in hits] == [ref.ids[i] for i in order[:k]]
            for h, i in zip(hits, order, strict=False):
                assert h.score == pytest.approx(total[i], abs=2e-6)
                assert h.set_scores == pytest.approx({s: sets[s][i] for s in sets}, abs=2e-6)
                assert h.tokens == {s: int(best[s][i]) for s in best}
                assert isinstance(h.score, float) and all(isinstance(t, int) for t in h.tokens.values())
        assert len(r.search_repr(qrepr(rows), MAX_K)) == 54


def test_k_is_checked(hand, rng_queries):
    index, _, _ = hand
    r = Retriever(index)
    q = qrepr([(rng_queries[0], "clip", 1.0), (rng_queries[0], "frame", 1.0)])
    tokens = np.ones((2, D), np.float32)
    for k in (0, -1, MAX_K + 1):
        msg = f"^k={k}: expected 1 <= k <= {MAX_K}$"
        with pytest.raises(PrvrError, match=msg):
            r.search_repr(q, k)
        with pytest.raises(PrvrError, match=msg):
            r.search_tokens_many([tokens], k)
        with pytest.raises(PrvrError, match=msg):
            r.search_tokens_many([], k)
    assert MAX_K == 1000 and len(r.search_repr(q, 1)) == 1 and len(r.search_tokens_many([tokens], MAX_K)[0]) == 54
    assert [len(h) for h in r.search_tokens_many([tokens, tokens[:1]], 1)] == [1, 1]
    # k=10 by default
    assert len(r.search_repr(q)) == 10 and len(r.search_tokens(tokens)) == 10
    assert [len(h) for h in r.search_tokens_many([tokens, tokens[:1]])] == [10, 10]


def test_search_within_videos(hand, rng_queries):
    index, ref, _ = hand
    r = Retriever(index)
    rows = [(rng_queries[3], "clip", 1.0), (rng_queries[3], "frame", 1.0)]
    total, _, best = ref.scores(rows)
    within = np.array([2, 9, 23, 24, 50])
    hits = r.search_repr(qrepr(rows), 3, within=within)
    order = within[np.argsort(-total[within], kind="stable")]
    assert [h.video_id for h in hits] == [ref.ids[i] for i in order[:3]]
    assert [h.score for h in hits] == pytest.approx(total[order[:3]].tolist(), abs=2e-6)
    assert [h.tokens["frame"] for h in hits] == best["frame"][order[:3]].tolist()
    assert [h.video_id for h in r.search_repr(qrepr(rows), 10, within=within)] == [ref.ids[i] for i in order]
    assert r.search_repr(qrepr(rows), 3, within=np.array([], dtype=np.int64)) == []


def test_videos_matching_a_path(hand):
    index, ref, shards = hand
    r = Retriever(index)
    files = {v[0]: v[2].get("file") or v[0] for s in shards for v in s}
    for path in ("cam1", "/media/", "v1", "v3", ".mp4", "nothing"):
        got = r.videos_matching(path)
        assert got.dtype == np.int64 and got.tolist() == [i for i, v in enumerate(ref.ids) if path in files[v]], path
    assert r.videos_matching("cam1").tolist() == [4, 19, 34, 49]
    assert r.videos_matching("v4").tolist() == [4] + list(range(40, 50))  # v04 by its file /media/cam1/v4.mp4
    assert r.videos_matching("v09").tolist() == [] and r.videos_matching("v08").tolist() == [8]  # a file, not its id


def test_search_tokens_by_hand(hand, rng_queries):
    """Raw token rows -> MaxSim's query (the first max_desc_l rows) -> hits, optionally only videos whose file path
    (or id) contains a string."""
    index, ref, _ = hand
    r = Retriever(index)
    rng = np.random.default_rng(4)
    tokens = rng.standard_normal((7, D)).astype(np.float32) * 3
    total, _, _ = ref.scores(single_rows(tokens))
    order = np.argsort(-total, kind="stable")
    hits = r.search_tokens(tokens, 5)
    assert [h.video_id for h in hits] == [ref.ids[i] for i in order[:5]]
    assert [h.score for h in hits] == pytest.approx(total[order[:5]].tolist(), abs=2e-6)
    # rows past max_desc_l (5) are not read
    assert [h.score for h in r.search_tokens(np.concatenate([tokens[:5], -tokens[5:]]), 5)] == [h.score for h in hits]
    within = r.videos_matching("cam2")
    assert within.tolist() == [14, 29, 44]
    sub = within[np.argsort(-total[within], kind="stable")]
    assert [h.video_id for h in r.search_tokens(tokens, 3, path="cam2")] == [ref.ids[i] for i in sub[:3]]
    assert r.search_tokens(tokens, 3, path="no such path") == []
    assert [h.video_id for h in r.search_tokens(tokens, 60, exact=True)] == [ref.ids[i] for i in order]


def test_query_features_are_checked(hand):
    index, _, _ = hand
    r = Retriever(index)
    for bad, shape in [(np.zeros((0, D)), "(0, 8)"), (np.zeros((3, D + 1)), "(3, 9)"), (np.zeros(D), "(8,)"),
                       (np.zeros((1, 2, D)), "(1, 2, 8)")]:
        msg = "^" + re.escape(f"query features of shape {shape}, expected (n_tokens >= 1, 8)") + "$"
        with pytest.raises(PrvrError, match=msg):
            r.embed(bad)
        with pytest.raises(PrvrError, match=msg):
            r.embed_many([np.ones((2, D)), bad])
    for value in (np.nan, np.inf, -np.inf):
        bad = np.ones((3, D))
        bad[2, 1] = value
        with pytest.raises(PrvrError, match="^query features contain NaN or Inf$"):
            r.embed(bad)
        with pytest.raises(PrvrError, match="^query features contain NaN or Inf$"):
            r.search_tokens_many([np.ones((2, D)), bad])
    q = r.embed(np.array([[3, 0, 0, 0, 0, 0, 0, 0], [0, 4, 0, 0, 0, 0, 0, 0]], np.float64))
    want = np.array([1, 1, 0, 0, 0, 0, 0, 0]) / np.sqrt(2)
    np.testing.assert_allclose(q.vectors.numpy(), np.stack([want, want])[None], atol=1e-6)
    assert q.normalized and q.targets == ("clip", "frame") and q.vectors.dtype == torch.float32


def test_non_finite_query_vectors_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    videos = [("a", {"clip": unit(rng.standard_normal((4, D))), "frame": unit(rng.standard_normal((2, D)))}, {})]
    r = Retriever(make_index(tmp_path, [videos], cfg=maxsim_config(text_dim=5)))
    with torch.no_grad():
        r.model.query_map.weight[0, 0] = float("inf")
    for call in (lambda: r.embed(np.ones((2, 5))), lambda: r.embed_many([np.ones((2, 5))])):
        with pytest.raises(PrvrError, match="^the model's query vectors are NaN or Inf$"):
            call()


def test_search_tokens_many_equals_one_at_a_time(hand):
    """Several queries of different lengths scored as one matrix: the hits of `search_tokens`, query by query."""
    index, ref, _ = hand
    r = Retriever(index)
    rng = np.random.default_rng(5)
    tokens = [rng.standard_normal((n, D)).astype(np.float32) for n in (1, 3, 6, 2)]
    many = r.search_tokens_many(tokens, 9)
    assert len(many) == 4
    for t, hits in zip(tokens, many, strict=True):
        total, sets, best = ref.scores(single_rows(t))
        order = np.argsort(-total, kind="stable")[:9]
        assert [h.video_id for h in hits] == [ref.ids[i] for i in order]
        for h, i in zip(hits, order, strict=True):
            assert h.score == pytest.approx(total[i], abs=2e-6)
            assert h.set_scores == pytest.approx({s: sets[s][i] for s in sets}, abs=2e-6)
            assert h.tokens == {s: int(best[s][i]) for s in best}
        same_hits(r.search_tokens(t, 9), hits)
    assert [len(h) for h in r.search_tokens_many(tokens, MAX_K)] == [54] * 4
    assert r.search_tokens_many([], 5) == []
    filtered = r.search_tokens_many(tokens[:2], 2, path="cam0")
    assert [[h.video_id for h in hits] for hits in filtered] == [
        [h.video_id for h in r.search_tokens(t, 2, path="cam0")] for t in tokens[:2]]
    assert {h.video_id for hits in filtered for h in hits} <= {"v09", "v24", "v39"}
    assert r.search_tokens_many(tokens[:2], 2, path="nowhere") == [[], []]


def test_scores_many_by_hand(hand, rng_queries):
    """N queries with several weighted rows (zero-weight padding rows of the shorter ones) in one product."""
    index, ref, _ = hand
    r = Retriever(index)
    q = rng_queries
    queries = [[(q[0], "clip", 1.0), (q[1], "frame", 0.5), (q[2], "frame", 2.0)],
               [(q[3], "clip", 0.2), (q[4], "frame", 1.0), (q[5], "frame", 0.0)],
               [(q[5], "clip", 1.0), (q[0], "frame", 1.0), (q[1], "frame", 1.0)]]
    sc = r.scores_many(QueryRepr.cat([qrepr(rows) for rows in queries]))
    assert sc.total.shape == (54, 3)
    for j, rows in enumerate(queries):
        total, sets, best = ref.scores(rows)
        np.testing.assert_allclose(sc.total[:, j].numpy(), total, atol=2e-6)
        for name in LAYOUTS:
            np.testing.assert_allclose(sc.sets[name][:, j].numpy(), sets[name], atol=2e-6)
            assert sc.tokens[name][:, j].tolist() == best[name].tolist()
    # a row of weight 0 never decides the best token, also where every live row's best is negative
    neg = [(q[0], "clip", 1.0), (q[1], "frame", 0.0), (q[2], "frame", 1.0)]
    want = ref.scores(neg)
    sc = r.scores_many(qrepr(neg))
    assert sc.tokens["frame"][:, 0].tolist() == want[2]["frame"].tolist()
    np.testing.assert_allclose(sc.sets["frame"][:, 0].numpy(), want[1]["frame"], atol=2e-6)


def same_hits(a, b):
    """The same hits, scores to float32 rounding (one matrix product against one per query)."""
    assert [h.video_id for h in a] == [h.video_id for h in b]
    for x, y in zip(a, b, strict=True):
        x, y = x.to_dict(), y.to_dict()
        assert x.pop("score") == pytest.approx(y.pop("score"), abs=1e-6)
        assert x.pop("set_scores") == pytest.approx(y.pop("set_scores"), abs=1e-6)
        mx, my = x.pop("moments"), y.pop("moments")
        assert [m.pop("score") for m in mx] == pytest.approx([m.pop("score") for m in my], abs=1e-6)
        assert mx == my and x == y


def test_an_empty_index(tmp_path, rng_queries):
    r = Retriever(make_index(tmp_path, []))
    q = qrepr([(rng_queries[0], "clip", 1.0), (rng_queries[0], "frame", 1.0)])
    assert r.search_repr(q, 5) == [] and r.search_tokens(np.ones((2, D)), 3) == []
    assert r.search_tokens_many([np.ones((2, D)), np.ones((1, D))], 3) == [[], []]
    sc = r.scores(q)
    assert sc.total.shape == (0,) and sc.sets == {} and sc.tokens == {}
    with pytest.raises(PrvrError, match="^k=0: expected 1 <= k <= 1000$"):
        r.search_repr(q, 0)
    assert r.videos_matching("v").tolist() == []


# ------------------------------------------------------------------------------------------------ hits and moments
def expected_hit(r, ref, i, tokens):
    """A hit's time fields by the rules of `_hit`, from the meta by hand."""
    meta = ref.videos[i][2]
    n = meta.get("n_raw_frames", 0)
    t = tokens["clip"]
    lo, hi = LAYOUTS["clip"].frame_rows(n, t) if n else (t, t + 1)
    if not (n and meta.get("duration")):
        return (lo, hi), None, None, None, None
    dur = meta["duration"]
    f_lo, f_hi = LAYOUTS["frame"].frame_rows(n, tokens["frame"])
    frame = (f_lo + f_hi - 1) // 2
    times = meta.get("frame_times")
    ft = times[frame] if times is not None and len(times) == n else (frame + 0.5) / n * dur
    return (lo, hi), lo / n * dur, hi / n * dur, frame, ft


def test_hits_carry_seconds_and_the_best_frame(hand, rng_queries):
    index, ref, _ = hand
    r = Retriever(index)
    seen = set()
    for q in rng_queries:
        rows = [(q, "clip", 1.0), (q, "frame", 1.0)]
        for h in r.search_repr(qrepr(rows), 54):
            i = ref.ids.index(h.video_id)
            frames, start, end, frame, ft = expected_hit(r, ref, i, h.tokens)
            assert (h.frames, h.start, h.end, h.frame) == (frames, pytest.approx(start), pytest.approx(end), frame)
            assert h.frame_time == pytest.approx(ft)
            seen.add((i % 5, h.frame is not None and h.frame != h.frames[0]))
    assert {k for k, _ in seen} == {0, 1, 2, 3, 4} and (1, True) in seen


def test_hit_fields_by_hand(tmp_path):
    """One video of 12 raw frames over 6 s (0.5 s a frame): clip cell 2 covers frames [6, 9), frame token 4 (of 6
    pooled slots of 2 frames) frames [8, 10): its middle frame is row 8, at 4.25 s, or at its recorded time."""
    clip = np.eye(D)[[3, 1, 2, 5]]
    frame = np.eye(D)[[4, 5, 6, 7, 0, 1]]
    q = unit(np.eye(D)[2] + np.eye(D)[0])  # clip cell 2 and frame token 4
    metas = [{"n_raw_frames": 12, "duration": 6.0}, {"n_raw_frames": 12, "duration": 6.0,
                                                     "frame_times": [10.0 + f for f in range(12)]},
             {"n_raw_frames": 12}, {"duration": 6.0}, {"n_raw_frames": 0, "duration": 6.0}]
    videos = [(f"m{i}", {"clip": clip, "frame": frame}, m) for i, m in enumerate(metas)]
    r = Retriever(make_index(tmp_path, [videos]))
    hits = {h.video_id: h for h in r.search_repr(qrepr([(q, "clip", 1.0), (q, "frame", 1.0)]), 5)}
    s = 0.7 * 2 ** -0.5 + 0.3 * 2 ** -0.5
    assert [h.score for h in hits.values()] == pytest.approx([s] * 5)
    assert all(h.tokens == {"clip": 2, "frame": 4} for h in hits.values())
    assert hits["m0"].set_scores == pytest.approx({"clip": 0.7 * 2 ** -0.5, "frame": 0.3 * 2 ** -0.5})
    h = hits["m0"]
    assert (h.start, h.end, h.frames, h.frame, h.frame_time) == (3.0, 4.5, (6, 9), 8, 4.25)
    h = hits["m1"]
    assert (h.start, h.end, h.frames, h.frame, h.frame_time) == (3.0, 4.5, (6, 9), 8, 18.0)
    for vid in ("m2", "m4"):  # duration or frame count unknown: no seconds
        h = hits[vid]
        assert (h.start, h.end, h.frame, h.frame_time) == (None, None, None, None)
    assert hits["m2"].frames == (6, 9) and hits["m3"].frames == (2, 3) and hits["m4"].frames == (2, 3)
    assert hits["m3"].start is None and hits["m3"].moments == [] and hits["m2"].moments == []
    d = hits["m0"].to_dict()
    assert d["video_id"] == "m0" and d["frames"] == (6, 9) and d["moments"][0]["start"] == 3.0


def test_hit_without_a_frame_set(tmp_path):
    """Only fixed sets: the best frame is the middle frame of the moment."""
    clip = np.eye(D)[:4]
    q = unit(np.eye(D)[1])
    videos = [("a", {"clip": clip}, {"n_raw_frames": 12, "duration": 6.0}),
              ("b", {"clip": clip}, {"n_raw_frames": 12, "duration": 6.0, "frame_times": list(range(12))})]
    r = Retriever(make_index(tmp_path, [videos], {"clip": TokenLayout(4)}, {"clip": 1.0}))
    hits = r.search_repr(qrepr([(q, "clip", 1.0)]), 2)
    assert [h.video_id for h in hits] == ["a", "b"] and hits[0].score == pytest.approx(1.0)
    assert (hits[0].start, hits[0].end, hits[0].frames, hits[0].frame, hits[0].frame_time) == (1.5, 3.0, (3, 6), 4, 2.25)
    assert (hits[1].frame, hits[1].frame_time) == (4, 4.0)
    assert hits[0].moments[0] == {"start": 1.5, "end": 3.0, "score": pytest.approx(1.0), "frame": 4, "frame_time": 2.25}
    assert [m["start"] for m in hits[0].moments] == [1.5, 4.5]  # cells 0 and 2 touch cell 1; cell 3 does not


def moment_video():
    """16 raw frames over 8 s; clip cells [0,4) [4,8) [8,12) [12,15) with similarities 0.5, 0.9, 0.2, 0.6 to the
    query's clip row; frames pooled into 6 slots [0,3) [3,5) [5,8) [8,11) [11,13) [13,15) (cell_bounds: the last
    frame falls out)."""
    e = np.eye(D)
    q = e[0]
    clip = np.stack([unit(c * e[0] + np.sqrt(1 - c * c) * e[1]) for c in (0.5, 0.9, 0.2, 0.6)])
    frame = np.stack([unit(c * e[0] + np.sqrt(1 - c * c) * e[2]) for c in (0.1, 0.3, 0.8, 0.4, 0.7, 0.2)])
    return q, clip, frame


def test_moments_by_hand(tmp_path):
    q, clip, frame = moment_video()
    meta = {"n_raw_frames": 16, "duration": 8.0}
    times = {"n_raw_frames": 16, "duration": 8.0, "frame_times": [100.0 + f for f in range(16)]}
    r = Retriever(make_index(tmp_path, [[("a", {"clip": clip, "frame": frame}, meta),
                                         ("b", {"clip": clip, "frame": frame}, times)]]))
    assert LAYOUTS["frame"].spans(16).tolist() == [[0, 3], [3, 5], [5, 8], [8, 11], [11, 13], [13, 15]]
    query = qrepr([(q, "clip", 2.0), (q, "frame", 1.0)])
    got = r.moments(query, "a")
    c = 0.7 * 2.0
    # cell 1 [4, 8): frame slots [3,5) [5,8) overlap it, the best is [5,8) (0.8): frame 6; cells 0 and 2 touch it;
    # cell 3 [12, 15): slots [11,13) (0.7) and [13,15): frame 11
    assert got == [{"start": 2.0, "end": 4.0, "score": pytest.approx(c * 0.9, abs=1e-3), "frame": 6, "frame_time": 3.25},
                   {"start": 6.0, "end": 7.5, "score": pytest.approx(c * 0.6, abs=1e-3), "frame": 11,
                    "frame_time": 5.75}]
    assert r.moments(query, "a", n=1) == got[:1]
    assert r.moments(query, "a", rows=r.scaled_rows(query)) == got
    assert [m["frame_time"] for m in r.moments(query, "b")] == [106.0, 111.0]
    hits = r.search_repr(query, 2)
    assert hits[0].moments == got and hits[0].moments[0]["start"] == hits[0].start
    assert hits[0].moments[0]["frame"] == hits[0].frame


def test_a_frame_slot_touching_the_moment_is_outside(tmp_path):
    """The moment's best frame comes from the frame slots that overlap it; one that only touches it (on either
    side) is outside, however good."""
    e = np.eye(D)

    def tok(cs):
        return np.stack([unit(c * e[0] + np.sqrt(1 - c * c) * e[1]) for c in cs])

    meta = {"n_raw_frames": 16, "duration": 8.0}
    videos = [("a", {"clip": tok([0.1, 0.9, 0.2, 0.3]), "frame": tok([0.1, 0.5, 0.6, 0.95, 0.2, 0.1])}, meta),
              ("b", {"clip": tok([0.1, 0.2, 0.9, 0.3]), "frame": tok([0.1, 0.2, 0.95, 0.5, 0.6, 0.1])}, meta)]
    r = Retriever(make_index(tmp_path, [videos]))
    q = qrepr([(e[0], "clip", 1.0), (e[0], "frame", 1.0)])
    assert LAYOUTS["clip"].spans(16).tolist() == [[0, 4], [4, 8], [8, 12], [12, 15]]
    assert r.moments(q, "a", n=1)[0]["frame"] == 6  # cell [4, 8): slot [8, 11) touches it at 8; [5, 8) is the best
    assert r.moments(q, "b", n=1)[0]["frame"] == 11  # cell [8, 12): slot [5, 8) touches it at 8; [11, 13) is the best


def test_moments_score_every_row(tmp_path):
    """A moment's score sums the weighted similarities of every row aimed at the moment set."""
    q, clip, frame = moment_video()
    e = np.eye(D)
    r = Retriever(make_index(tmp_path, [[("a", {"clip": clip, "frame": frame}, {"n_raw_frames": 16,
                                                                                 "duration": 8.0})]]))
    rows = [(q, "clip", 1.0), (e[1], "clip", 0.5), (q, "frame", 1.0)]
    ms = r.moments(qrepr(rows), "a", n=4)
    cells = (clip.astype(np.float16).astype(np.float64) @ (0.7 * q)) + (clip.astype(np.float16) @ (0.35 * e[1]))
    order = np.argsort(-cells)
    assert [m["score"] for m in ms] == pytest.approx(cells[order[:len(ms)]].tolist(), abs=1e-6)


def test_moments_default_count_and_touching(tmp_path):
    """Three moments by default; a moment touching a better one is skipped, one a frame apart is kept."""
    e = np.eye(D)
    clip = np.stack([unit(c * e[0] + np.sqrt(1 - c * c) * e[1]) for c in (0.9, 0.8, 0.7, 0.6)])
    videos = [("b", {"clip": clip, "frame": unit(np.ones((1, D)))}, {"n_raw_frames": 200, "duration": 20.0})]
    layouts = {"clip": TokenLayout(4, proposals=((0, 1), (2, 3), (3, 4), (1, 2))), "frame": LAYOUTS["frame"]}
    r = Retriever(make_index(tmp_path, [videos], layouts))
    q = qrepr([(e[0], "clip", 1.0)])
    spans = layouts["clip"].spans(200).tolist()  # [0,50) [100,150) [150,200)->[150,199) [50,100)
    got = r.moments(q, "b", n=5)
    kept = [(int(m["start"] * 10), int(m["end"] * 10)) for m in got]
    want = []
    for t in range(4):
        lo, hi = spans[t]
        if not any(lo <= b and a <= hi for a, b in want):
            want.append((lo, hi))
    assert kept == want and len(want) == 2  # [0,50) then [100,150): [150,..) touches it, [50,100) touches [0,50)
    assert [m["frame"] for m in got] == [16, 124]  # the frame slot [0, 33) inside the first; none inside the second
    assert len(r.moments(q, "b")) == 2
    many = np.stack([unit(c * e[0] + np.sqrt(1 - c * c) * e[1]) for c in (0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.5)])
    r2 = Retriever(make_index(tmp_path / "8", [[("c", {"clip": many}, {"n_raw_frames": 80, "duration": 8.0})]],
                              {"clip": TokenLayout(8)}, {"clip": 1.0}))
    got = r2.moments(q, "c")
    assert [(m["start"], m["end"]) for m in got] == [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)]  # three by default
    assert [m["frame"] for m in got] == [4, 24, 44] and len(r2.moments(q, "c", n=10)) == 4


def test_moments_need_a_duration_and_max_similarity(hand, rng_queries, tmp_path):
    index, ref, _ = hand
    r = Retriever(index)
    q = qrepr([(rng_queries[0], "clip", 1.0), (rng_queries[0], "frame", 1.0)])
    for i, vid in enumerate(ref.ids[:10]):
        meta = ref.videos[i][2]
        assert (r.moments(q, vid) == []) == (not (meta.get("n_raw_frames") and meta.get("duration")))
    generic = Retriever(index)
    generic.exact_only = True
    assert generic.moments(q, "v00") == [] and generic.moments(q, "v01") == []
    assert all(h.moments == [] for h in generic.search_repr(q, 5))


def test_moments_listed_for_the_first_fifty_hits(hand, rng_queries):
    index, ref, _ = hand
    r = Retriever(index)
    assert search_mod.MOMENT_HITS == 50 and search_mod.MOMENTS == 3
    q = qrepr([(rng_queries[2], "clip", 1.0), (rng_queries[2], "frame", 1.0)])
    hits = r.search_repr(q, 54)
    for h in hits[:50]:
        assert h.moments == r.moments(q, h.video_id)
    timed = [h for h in hits[50:] if r.moments(q, h.video_id)]
    assert timed and all(h.moments == [] for h in hits[50:])
    many = r.search_tokens_many([np.ones((2, D)), np.eye(D)[:3]], 54)
    for hits in many:
        assert all(h.moments == [] for h in hits[50:]) and any(h.moments for h in hits[:50])
    assert any(1 < len(h.moments) <= 3 for h in hits)


# ------------------------------------------------------------------------------------------------ ANN stage
@pytest.fixture(scope="module")
def with_ann(tmp_path_factory):
    shards = random_shards(seed=7, sizes=(20, 1, 19))
    index = make_index(tmp_path_factory.mktemp("ann"), shards, text_encoder=TEXT_SPEC)
    build_ann(index, nlist=4)
    return index, Ref(shards)


def test_ann_path_rescores_candidates_exactly(with_ann, rng_queries, monkeypatch):
    index, ref = with_ann
    r = Retriever(index)
    assert r.ann is not None
    asked = []
    real = r.ann.candidates

    def spy(q, sizes):
        asked.append(sizes)
        out = real(q, sizes)
        asked.append(out)
        return out

    monkeypatch.setattr(r.ann, "candidates", spy)
    rows = [(rng_queries[4], "clip", 1.0), (rng_queries[4], "frame", 1.0)]
    total, _, best = ref.scores(rows)
    hits = r.search_repr(qrepr(rows), 4, candidate_tokens=2, candidate_videos=2, nprobe=3)
    sizes, cands = asked
    assert (sizes.tokens, sizes.videos, sizes.nprobe) == (4, 4, 3)  # at least k tokens and videos
    assert len(cands) == 4 and np.all(np.diff(cands) > 0)
    order = cands[np.argsort(-total[cands], kind="stable")]
    assert [h.video_id for h in hits] == [ref.ids[i] for i in order]  # stage 2: the exact score of the candidates
    assert [h.score for h in hits] == pytest.approx(total[order].tolist(), abs=2e-6)
    assert [h.tokens["frame"] for h in hits] == best["frame"][order].tolist()
    asked.clear()
    hits = r.search_repr(qrepr(rows), 3, candidate_tokens=9, candidate_videos=6)
    assert (asked[0].tokens, asked[0].videos, asked[0].nprobe) == (9, 6, 1) and len(asked[1]) == 6
    assert [h.video_id for h in hits] == [ref.ids[i] for i in asked[1][np.argsort(-total[asked[1]])][:3]]
    asked.clear()
    r.search_repr(qrepr(rows), 3)  # default sizes
    assert (asked[0].tokens, asked[0].videos, asked[0].nprobe) == (4096, 1000, 1)
    asked.clear()
    exact = r.search_repr(qrepr(rows), 3, exact=True, candidate_videos=1)  # exact: no candidates
    assert asked == [] and [h.video_id for h in exact] == [ref.ids[i] for i in np.argsort(-total)[:3]]
    within = np.array([0, 20, 30])
    assert [h.video_id for h in r.search_repr(qrepr(rows), 3, within=within)] == [
        ref.ids[i] for i in within[np.argsort(-total[within])]]
    assert asked == []  # within: scored exactly


def test_ann_path_with_too_few_candidates_scans_everything(with_ann, rng_queries, monkeypatch):
    index, ref = with_ann
    r = Retriever(index)
    rows = [(rng_queries[5], "clip", 1.0), (rng_queries[5], "frame", 1.0)]
    total = ref.scores(rows)[0]
    order = np.argsort(-total, kind="stable")
    monkeypatch.setattr(r.ann, "candidates", lambda q, sizes: np.array([order[-1], order[-2]]))
    assert [h.video_id for h in r.search_repr(qrepr(rows), 3)] == [ref.ids[i] for i in order[:3]]
    monkeypatch.setattr(r.ann, "candidates", lambda q, sizes: np.array(sorted(order[-3:])))
    assert [h.video_id for h in r.search_repr(qrepr(rows), 3)] == [ref.ids[i] for i in order[-3:]]
    # several queries: each by its own candidates
    for t, hits in zip((np.ones((1, D)), np.eye(D)[:2]), r.search_tokens_many([np.ones((1, D)), np.eye(D)[:2]], 3),
                       strict=True):
        total = ref.scores(single_rows(t))[0]
        cands = np.array(sorted(order[-3:]))
        assert [h.video_id for h in hits] == [ref.ids[i] for i in cands[np.argsort(-total[cands], kind="stable")]]
    exact = r.search_tokens_many([np.ones((1, D))], 3, exact=True)[0]
    t = ref.scores(single_rows(np.ones((1, D))))[0]
    assert [h.video_id for h in exact] == [ref.ids[i] for i in np.argsort(-t, kind="stable")[:3]]


def test_exact_is_passed_down_to_the_scan(with_ann, monkeypatch):
    """`exact=True` skips the ANN stage from every entry point; left out, each query takes its own candidates."""
    index, ref = with_ann
    import prvr.encode.encoders as encoders

    monkeypatch.setattr(encoders, "load_text_encoder", lambda spec, device: WordsEncoder())
    r = Retriever(index)
    calls = []
    real = r.ann.candidates
    monkeypatch.setattr(r.ann, "candidates", lambda q, sizes: calls.append(1) or real(q, sizes))
    t = np.eye(D)[:2]
    monkeypatch.setattr(r, "query_features", lambda root, qid: t if (root, qid) == ("data", "q1") else None)
    order = np.argsort(-ref.scores(single_rows(t))[0], kind="stable")
    for run in (lambda: r.search_tokens(t, 3, exact=True), lambda: r.search("a b", 3, exact=True),
                lambda: r.search_query_id("data", "q1", 3, exact=True), lambda: r.search_query_id("data", "q1", 3, True),
                lambda: r.search_tokens_many([t, t], 3, exact=True)[1], lambda: r.search_many(["a b"], 3, exact=True)[0],
                lambda: r.search_tokens(t, 3, True), lambda: r.search("a b", 3, True)):
        assert [h.video_id for h in run()] == [ref.ids[i] for i in order[:3]] and calls == []
    for run, n in ((lambda: r.search_tokens(t, 3), 1), (lambda: r.search("a b", 3), 1),
                   (lambda: r.search_query_id("data", "q1", 3), 1),
                   (lambda: r.search_tokens_many([t, t], 3), 2), (lambda: r.search_many(["a b", "a"], 3), 2)):
        run()
        assert len(calls) == n
        calls.clear()


def test_several_queries_on_an_exact_scan_are_one_matrix(hand, monkeypatch):
    """Without a path filter, an exact scan of several queries reads the shards once for all (scores_many), not
    once per query; with one, each query is searched in its videos."""
    index, _, _ = hand
    r = Retriever(index)
    calls = []
    for name in ("scores_many", "search_repr"):
        real = getattr(r, name)
        monkeypatch.setattr(r, name, lambda *a, _n=name, _f=real, **kw: calls.append(_n) or _f(*a, **kw))
    tokens = [np.eye(D)[:2], np.ones((1, D))]
    r.search_tokens_many(tokens, 3)
    r.search_tokens_many(tokens, 3, exact=True)
    assert calls == ["scores_many", "scores_many"]
    calls.clear()
    r.search_tokens_many(tokens, 3, path="cam")
    assert calls == ["search_repr", "search_repr"]


def test_lists_score_as_the_module_doc_says(with_ann, rng_queries):
    """Stage 2 from the per-video lists: every video and subsets, several weighted rows per set, a zero-weight row,
    a set without rows, zero-scoring padding, best tokens."""
    index, ref = with_ann
    r = Retriever(index)
    assert r.ann.lists is not None
    q0, q1, q2 = rng_queries[:3]
    everyone, some = np.arange(len(ref.ids)), np.array([0, 5, 20, 21, 39])
    for rows in ([(q0, "clip", 1.0), (q0, "frame", 1.0)],
                 [(q0, "clip", 0.6), (q1, "clip", 0.4), (q2, "frame", 1.0), (q1, "frame", 0.0), (q0, "frame", 0.7)],
                 [(q1, "frame", 1.0)],
                 [(-q2, "clip", 1.0), (-q2, "frame", 1.0)]):
        want = ref.scores(rows)
        assert_scores(r._lists_scores(qrepr(rows), everyone, tokens=True), want)
        assert_scores(r._lists_scores(qrepr(rows), some, tokens=True), want, some)
        totals = r._lists_scores(qrepr(rows), some)
        np.testing.assert_allclose(totals.total.numpy(), want[0][some], rtol=0, atol=2e-6)
        full = r._lists_scores(qrepr(rows), some, tokens=True)  # the torch path's dtypes
        assert totals.total.dtype == full.total.dtype == torch.float32
        assert all(t.dtype == torch.int64 for t in full.tokens.values())
        assert totals.tokens == {} and set(totals.sets) == {"clip", "frame"}
    short = [i for i, v in enumerate(ref.videos) if len(v[1]["frame"]) < 6]
    rows = [(-q2, "clip", 1.0), (-q2, "frame", 1.0)]
    assert short and (r._lists_scores(qrepr(rows), everyone).sets["frame"].numpy()[short] >= 0).all()


def test_ann_search_takes_stage_two_from_the_lists(with_ann, rng_queries, monkeypatch):
    """The candidates' totals from the lists, then the k best again with their best tokens; the torch scan is not
    used. With as many candidates as k, one pass."""
    index, ref = with_ann
    r = Retriever(index)
    calls = []
    for name in ("_lists_scores", "scores"):
        real = getattr(r, name)
        monkeypatch.setattr(r, name, lambda q, videos, tokens=False, _n=name, _f=real: calls.append(
            (_n, videos.tolist(), tokens)) or (_f(q, videos, tokens) if _n == "_lists_scores" else _f(q, videos)))
    rows = [(rng_queries[4], "clip", 1.0), (rng_queries[4], "frame", 1.0)]
    total, _, best = ref.scores(rows)
    hits = r.search_repr(qrepr(rows), 3, candidate_tokens=9, candidate_videos=8)
    (n1, cands, t1), (n2, chosen, t2) = calls
    cands = np.array(cands)
    order = cands[np.argsort(-total[cands], kind="stable")]
    assert (n1, n2, t1, t2, len(cands)) == ("_lists_scores", "_lists_scores", False, True, 8)
    assert chosen == sorted(order[:3].tolist())
    assert [h.video_id for h in hits] == [ref.ids[i] for i in order[:3]]
    assert [h.score for h in hits] == pytest.approx(total[order[:3]].tolist(), abs=2e-6)
    assert [h.tokens for h in hits] == [{"clip": best["clip"][i], "frame": best["frame"][i]} for i in order[:3]]
    calls.clear()
    hits = r.search_repr(qrepr(rows), 10, candidate_tokens=400, candidate_videos=40)  # every video a candidate
    cands = np.array(calls[0][1])
    best10 = cands[np.argsort(-total[cands], kind="stable")[:10]]
    assert len(cands) >= 30 and calls[1][1] == sorted(best10.tolist())
    assert [h.video_id for h in hits] == [ref.ids[i] for i in best10]
    calls.clear()
    r.search_repr(qrepr(rows), 3, candidate_tokens=9, candidate_videos=3)
    assert [(c[0], len(c[1]), c[2]) for c in calls] == [("_lists_scores", 3, True)]
    calls.clear()
    monkeypatch.setattr(r.ann, "lists", None)  # an ANN stage built without them: the torch scan
    assert [h.video_id for h in r.search_repr(qrepr(rows), 3, candidate_tokens=9, candidate_videos=8)] == [
        ref.ids[i] for i in order[:3]]
    assert [(c[0], len(c[1])) for c in calls] == [("scores", 8)]


def test_lists_scores_refuse_non_finite(with_ann, rng_queries, monkeypatch):
    index, _ = with_ann
    r = Retriever(index)
    rows = [(rng_queries[0], "clip", 1.0), (rng_queries[0], "frame", 1.0)]
    real = r.ann.lists.best

    def nan_for_one(vectors, sets, videos, tokens=False):
        best, arg = real(vectors, sets, videos, tokens)
        best[1, -1] = np.nan
        return best, arg

    monkeypatch.setattr(r.ann.lists, "best", nan_for_one)
    for run in (lambda: r._lists_scores(qrepr(rows), np.arange(40)), lambda: r.search_repr(qrepr(rows), 3)):
        with pytest.raises(PrvrError, match=f"^{index.name}: non-finite scores \\(the index or the model is corrupt\\)$"):
            run()


def test_ann_without_lists(with_ann, rng_queries, tmp_path):
    index, ref = with_ann
    copy = tmp_path / "copy"
    shutil.copytree(index, copy)
    assert (copy / "ann.lists.faiss").exists()
    assert build_ann(copy, nlist=4, lists=False)["lists"] is None
    assert not (copy / "ann.lists.faiss").exists()
    r = Retriever(copy)
    assert r.ann is not None and r.ann.lists is None
    rows = [(rng_queries[3], "clip", 1.0), (rng_queries[3], "frame", 1.0)]
    total = ref.scores(rows)[0]
    hits = r.search_repr(qrepr(rows), 40, candidate_videos=40)
    assert [h.video_id for h in hits] == [ref.ids[i] for i in np.argsort(-total, kind="stable")]


def test_stale_or_generic_index_ignores_the_ann(with_ann, tmp_path):
    index, _ = with_ann
    copy = tmp_path / "copy"
    shutil.copytree(index, copy)
    assert Retriever(copy).ann is not None
    manifest = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(manifest.replace('"normalized": true', '"normalized": false'))
    r = Retriever(copy)
    assert r.exact_only and r.ann is None
    (copy / "manifest.json").write_text(manifest.replace('"n_videos": 40', '"n_videos": 41'))
    assert Retriever(copy).ann is None  # stale: exact until rebuilt


# ------------------------------------------------------------------------------------------------ model.score path
class MeanSim:
    """A model that does not score by max-similarity: per set, the mean cosine over a video's real tokens (its
    best token: the last real one), weighted 2 and 3 in its own total."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def set_scores(self, q, v):
        out = {}
        for name, s in v.normalize().sets.items():
            mask = torch.ones(s.tokens.shape[:2]) if s.mask is None else s.mask
            cos = torch.einsum("nd,bld->nbl", q.vectors[:, 0], s.tokens)
            out[name] = (cos * mask).sum(-1) / mask.sum(-1)
        return out

    def score(self, q, v):
        per = self.set_scores(q, v)
        return 2 * per["clip"] + 3 * per["frame"]

    def best_tokens(self, q, v):
        return {name: (s.mask.sum(-1).long() - 1 if s.mask is not None else torch.full((len(v),), 3)).expand(1, -1)
                for name, s in v.sets.items()}


def test_generic_path_is_the_models_own_score(tmp_path, rng_queries, monkeypatch):
    shards = random_shards(seed=9, sizes=(6, 1, 5))
    for s in shards:  # tokens stored as the model made them: not normalised
        for _, tokens, _ in s:
            for name in tokens:
                tokens[name] = tokens[name] * 2.5
    r = Retriever(make_index(tmp_path, shards, normalized=False))
    assert r.exact_only and r.ann is None
    r.model = MeanSim(r.model)
    ref = Ref(shards)
    vecs = [unit(ref.tokens[v]["frame"]).mean(0) for v in range(12)]
    counts = [len(t["frame"]) for t in ref.tokens]
    for q in rng_queries[:2]:
        query = qrepr([(q, "clip", 1.0), (q, "frame", 1.0)])
        clip = np.array([(unit(t["clip"]) @ q).mean() for t in ref.tokens])
        frame = np.array([v @ q for v in vecs])
        sc = r.scores(query)
        np.testing.assert_allclose(sc.total.numpy(), 2 * clip + 3 * frame, atol=1e-5)
        np.testing.assert_allclose(sc.sets["clip"].numpy(), 0.7 * clip, atol=1e-5)
        np.testing.assert_allclose(sc.sets["frame"].numpy(), 0.3 * frame, atol=1e-5)
        assert sc.tokens["frame"].tolist() == [c - 1 for c in counts] and sc.tokens["clip"].tolist() == [3] * 12
        subset = np.array([1, 5, 6, 11])
        part = r.scores(query, subset)
        np.testing.assert_allclose(part.total.numpy(), (2 * clip + 3 * frame)[subset], atol=1e-5)
        assert part.tokens["frame"].tolist() == [counts[i] - 1 for i in subset]
        monkeypatch.setattr(search_mod, "EXACT_CHUNK", 2)  # in chunks: the same
        chunked = r.scores(query)
        np.testing.assert_allclose(chunked.total.numpy(), sc.total.numpy(), atol=1e-6)
        assert chunked.tokens["frame"].tolist() == sc.tokens["frame"].tolist()
        np.testing.assert_allclose(r.scores(query, subset).total.numpy(), part.total.numpy(), atol=1e-6)
        monkeypatch.undo()
        hits = r.search_repr(query, 4)
        order = np.argsort(-(2 * clip + 3 * frame), kind="stable")[:4]
        assert [h.video_id for h in hits] == [ref.ids[i] for i in order]
        assert all(h.moments == [] for h in hits)
    many = r.search_tokens_many([np.ones((1, D)), np.eye(D)[:2]], 3)
    assert [[h.video_id for h in hits] for hits in many] == [
        [h.video_id for h in r.search_tokens(t, 3)] for t in (np.ones((1, D)), np.eye(D)[:2])]


def test_generic_path_weighs_a_set_without_a_weight_zero(tmp_path, rng_queries):
    shards = random_shards(seed=9, sizes=(3, 2))
    r = Retriever(make_index(tmp_path, shards, weights={"clip": 0.7}, normalized=False))
    r.model = MeanSim(r.model)
    ref = Ref(shards)
    q = rng_queries[0]
    sc = r.scores(qrepr([(q, "clip", 1.0), (q, "frame", 1.0)]))
    clip = np.array([(unit(t["clip"]) @ q).mean() for t in ref.tokens])
    np.testing.assert_allclose(sc.sets["clip"].numpy(), 0.7 * clip, atol=1e-5)
    assert sc.sets["frame"].tolist() == [0.0] * 5  # the total is still the model's own
    frame = np.array([unit(t["frame"]).mean(0) @ q for t in ref.tokens])
    np.testing.assert_allclose(sc.total.numpy(), 2 * clip + 3 * frame, atol=1e-5)


def test_video_repr_pads_the_stored_tokens(hand):
    """The stored float16 tokens of some videos, padded back to (B, capacity, D), a mask for a ragged set."""
    index, ref, _ = hand
    r = Retriever(index)
    s = r.shards[2]
    idx = np.array([4, 0, 7])
    v = r._video_repr(s, idx)
    assert isinstance(v, VideoRepr) and not v.normalized
    assert v.sets["clip"].mask is None and v.sets["clip"].tokens.shape == (3, 4, D)
    assert v.sets["frame"].tokens.shape == (3, 6, D) and v.sets["frame"].tokens.dtype == torch.float32
    for j, i in enumerate(idx):
        t = ref.tokens[24 + i]
        c = len(t["frame"])
        assert np.array_equal(v.sets["clip"].tokens[j].numpy(), t["clip"].astype(np.float32))
        assert np.array_equal(v.sets["frame"].tokens[j, :c].numpy(), t["frame"].astype(np.float32))
        assert not v.sets["frame"].tokens[j, c:].any()
        assert v.sets["frame"].mask[j].tolist() == [1.0] * c + [0.0] * (6 - c)
    # the model's own max-similarity on them is the index's score
    q = qrepr([(np.ones(D), "clip", 1.0), (np.ones(D), "frame", 1.0)])
    per = max_similarity_scores(q, v, LAYOUTS)
    sc = r.scores(q, 24 + np.sort(idx))
    order = np.argsort(idx)
    for name in LAYOUTS:
        # float16 tokens renormalised by the model: 3e-5
        np.testing.assert_allclose(sc.sets[name].numpy(), WEIGHTS[name] * per[name][0, order].numpy(), atol=1e-4)


# ------------------------------------------------------------------------------------------------ text queries
def test_check_query_text():
    assert check_query_text("  a red ball \n") == "a red ball"
    assert check_query_text("x" * MAX_QUERY_CHARS) == "x" * 1000 and MAX_QUERY_CHARS == 1000
    assert check_query_text(" " + "y" * 1000 + " ") == "y" * 1000  # counted after stripping
    for empty in ("", "   ", "\n\t"):
        with pytest.raises(PrvrError, match="^empty query$"):
            check_query_text(empty)
    with pytest.raises(PrvrError, match="^query of 1001 characters, expected at most 1000$"):
        check_query_text("z" * 1001)


def test_text_encoder_recorded_or_not(hand, tmp_path, monkeypatch):
    index, ref, shards = hand
    r = Retriever(index)
    msg = (f"^{index.name}: the index records no text encoder \\(its data was not made by `prvr extract "
           "--text-encoder`\\); search it with --query-id$")
    for call in (r.text_encoder, lambda: r.encode_text("ball"), lambda: r.search("ball"),
                 lambda: r.search_many(["ball"])):
        with pytest.raises(PrvrError, match=msg):
            call()
    spec = TEXT_SPEC
    loads = []

    def load(s, device):
        loads.append((s, device))
        return WordsEncoder()

    import prvr.encode.encoders as encoders

    monkeypatch.setattr(encoders, "load_text_encoder", load)
    r = Retriever(make_index(tmp_path, shards, text_encoder=spec))
    with pytest.raises(PrvrError, match="^empty query$"):
        r.encode_texts(["a", " "])
    enc = r.text_encoder()
    assert r.text_encoder() is enc and loads == [(spec, torch.device("cpu"))] and r.text_encoder_loads == 1
    assert np.array_equal(r.encode_text("  two words "), np.eye(D)[:2])
    assert [t.shape for t in r.encode_texts(["one", "a b c"])] == [(1, D), (3, D)]
    assert [h.to_dict() for h in r.search("a b c", 4)] == [h.to_dict() for h in r.search_tokens(np.eye(D)[:3], 4)]
    assert [h.video_id for h in r.search("a b", 5, path="cam1")] == [
        h.video_id for h in r.search_tokens(np.eye(D)[:2], 5, path="cam1")]
    for hits, n in zip(r.search_many(["a", "a b c"], 3), (1, 3), strict=True):
        same_hits(hits, r.search_tokens(np.eye(D)[:n], 3))
    for hits, n in zip(r.search_many(["a", "a b c"], 3, path="cam0"), (1, 3), strict=True):
        assert [h.video_id for h in hits] == [h.video_id for h in r.search_tokens(np.eye(D)[:n], 3, path="cam0")]
        assert {h.video_id for h in hits} <= {"v09", "v24", "v39"} and len(hits) == 3
    assert len(r.search("a b")) == 10 and [len(h) for h in r.search_many(["a", "b c"])] == [10, 10]  # k=10 default
    assert r.text_encoder_loads == 1 and len(loads) == 1


def test_check_query_encoder(hand, tmp_path):
    index, _, shards = hand
    r = Retriever(index)
    r.check_query_encoder({"kind": "hf", "id": "x"})  # the index records none: anything goes
    r.check_query_encoder(None)
    mine = {"kind": "hf", "id": "org/enc", "dim": 8}
    r = Retriever(make_index(tmp_path, shards, text_encoder=mine))
    r.check_query_encoder(None)
    r.check_query_encoder({"kind": "hf", "id": "org/enc"})  # same kind, path and id
    with pytest.raises(PrvrError, match="^index: query encoder hf:org/other differs from the index's hf:org/enc; "
                                        "queries must be encoded with the encoder the index was built with$"):
        r.check_query_encoder({"kind": "hf", "id": "org/other"})
    with pytest.raises(PrvrError, match="^index: the text encoder of X minilm differs from the index's hf:org/enc;"):
        r.check_query_encoder({"kind": "minilm"}, "the text encoder of X")


def test_hit_dataclass():
    h = Hit("v", 1.5, {"clip": 1.0}, {"clip": 2}, 0.5, 1.0, 0.75, (1, 2))
    assert h.frame is None and h.moments == [] and h.to_dict() == {
        "video_id": "v", "score": 1.5, "set_scores": {"clip": 1.0}, "tokens": {"clip": 2}, "start": 0.5, "end": 1.0,
        "frame_time": 0.75, "frames": (1, 2), "frame": None, "moments": []}
    assert Hit("w", 0, {}, {}, None, None, None, (0, 1)).moments is not h.moments
