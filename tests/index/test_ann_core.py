"""The ANN first stage in process and fast (a few hundred planted tokens, no model): the sizes rule, what
`build_ann` writes (ids, owners, parts, lists), its refusals, `TokenANN`'s checks of what it reads and of
staleness, the exact re-scoring of product-coded tokens, and the candidates' upper bound against the formula of
the module doc computed by hand. These are also the tests `make mutate` runs on prvr.index.ann (the two-stage
test builds its ANN in a subprocess, which mutmut cannot map)."""

import json
import math
from collections import defaultdict

import faiss
import numpy as np
import pytest
import torch

from prvr.errors import OutputError
from prvr.index.ann import AnnSizes, TokenANN, ann_sizes, build_ann
from prvr.index.store import IndexError_, append_shard, create_index, layouts_of, load_shard, read_manifest
from prvr.models.base import QueryRepr, TokenLayout

D = 8
LAYOUTS = {"clip": TokenLayout(4), "frame": TokenLayout(6, ragged=True, pads_score_zero=True)}
WEIGHTS = {"clip": 0.6, "frame": 0.4}


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_index(path, shards, layouts=LAYOUTS, weights=WEIGHTS, normalized=True):
    """shards: per shard, per video {set: (n, D) tokens}. Returns the index path."""
    path.mkdir(parents=True, exist_ok=True)
    ckpt = path.parent / f"{path.name}.ckpt"
    ckpt.write_bytes(b"")  # the ANN stage never reads the model
    manifest = create_index(path / "index", ckpt, {"model": {}}, layouts, weights, normalized, None)
    n = 0
    for videos in shards:
        ids = [f"v{n + i:03d}" for i in range(len(videos))]
        manifest = append_shard(path / "index", manifest, ids, {s: [v[s] for v in videos] for s in layouts},
                                [{} for _ in videos])
        n += len(videos)
    return path / "index"


def random_videos(rng, n, dim=D):
    return [{"clip": unit(rng.standard_normal((4, dim))), "frame": unit(rng.standard_normal((int(rng.integers(1, 7)), dim)))}
            for _ in range(n)]


class Table:
    """Every token of an index by hand, in the documented id order (shard by shard, in a shard set by set, in a set
    video by video): its float16 value, its video (global index) and its set."""

    def __init__(self, index):
        manifest = read_manifest(index)
        names = list(layouts_of(manifest))
        tokens, owner, sets, base = [], [], [], 0
        for s in manifest["shards"]:
            shard = load_shard(index / s, names)
            for si, name in enumerate(names):
                st = shard.sets[name]
                for v in range(len(shard.ids)):
                    rows = np.asarray(st.tokens[st.offsets[v]:st.offsets[v + 1]], np.float64)
                    tokens += list(rows)
                    owner += [base + v] * len(rows)
                    sets += [si] * len(rows)
            base += len(shard.ids)
        self.tokens, self.owner, self.set = np.array(tokens), np.array(owner), np.array(sets)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    rng = np.random.default_rng(0)
    index = make_index(tmp_path_factory.mktemp("ann"), [random_videos(rng, 30), random_videos(rng, 20)])
    return index, Table(index)


def tann(index):
    manifest = read_manifest(index)
    names = list(layouts_of(manifest))
    return TokenANN(index, manifest["score_weights"], [load_shard(index / s, names) for s in manifest["shards"]])


# ------------------------------------------------------------------------------------------------ sizes
def test_ann_sizes_by_hand():
    assert ann_sizes(1000, 64) == AnnSizes(4096, 1000, 16)  # the floors; a quarter of the lists
    assert ann_sizes(100_001, 101) == AnnSizes(16_001, 4_001, 26)  # 0.16 and 0.04 per video, rounded up
    assert ann_sizes(100_000, 100) == AnnSizes(16_000, 4_000, 25)
    assert ann_sizes(10, 2) == AnnSizes(4096, 1000, 1) and ann_sizes(10, 1).nprobe == 1
    assert ann_sizes(10, 64, tokens=5, videos=3, nprobe=2) == AnnSizes(5, 3, 2)
    assert ann_sizes(10, 64, nprobe=100).nprobe == 100  # given: kept as given
    assert ann_sizes(10, 3, videos=7) == AnnSizes(4096, 7, 1)
    assert ann_sizes(100_000, 100, codes="sq4") == AnnSizes(24_000, 4_000, 25)  # sq4: 0.24 tokens per video
    assert ann_sizes(100_000, 100, codes="pq4") == ann_sizes(100_000, 100, codes="sq8") == AnnSizes(16_000, 4_000, 25)
    assert ann_sizes(10, 64, codes="sq4") == AnnSizes(4096, 1000, 16)


# ------------------------------------------------------------------------------------------------ build
@pytest.mark.parametrize("codes", ["sq8", "pq4", "sq4"])
def test_build_writes_ids_owners_and_parts(two_shards, codes, tmp_path):
    index, table = two_shards
    meta = build_ann(index, nlist=8, codes=codes)
    n_tokens = len(table.tokens)
    counts = [sum(1 for i in range(n_tokens) if table.set[i] == s and table.owner[i] < 30) for s in (0, 1)]
    assert meta == {"n_videos": 50, "n_tokens": n_tokens, "nlist": 8, "codes": codes, "token_sets": ["clip", "frame"],
                    "shards": read_manifest(index)["shards"], "part_starts": [0, counts[0], sum(counts),
                                                                              sum(counts) + 20 * 4],
                    "part_sets": [0, 1, 0, 1], "lists": "ann.lists.faiss"}
    assert json.loads((index / "ann.json").read_text()) == meta
    assert np.array_equal(np.load(index / "ann.owners.npy"), table.owner)
    ann = faiss.read_index(str(index / "ann.faiss"))
    assert ann.ntotal == n_tokens and ann.nlist == 8
    ann.nprobe = 8
    _, ids = ann.search(table.tokens.astype(np.float32), 8)  # every token is stored under its own id
    if codes in ("sq8", "sq4"):  # codes of every dimension rank finely: a token is the nearest to itself
        assert np.mean(ids[:, 0] == np.arange(n_tokens)) > (0.97 if codes == "sq8" else 0.93)  # sq4: 0.968 at 8-d
    else:  # product codes rank roughly: re-scored exactly, a token is the best of the 8 fetched for itself
        exact = tann(index)._exact(table.tokens.astype(np.float32), ids)
        assert np.mean(np.take_along_axis(ids, np.argmax(exact, 1)[:, None], 1)[:, 0] == np.arange(n_tokens)) > 0.99


@pytest.mark.parametrize("codes", ["sq8", "pq4", "sq4"])
def test_build_is_faiss_over_every_token_in_id_order(two_shards, codes):
    """With the whole collection as its sample, the ANN stage is, byte for byte, faiss's inverted lists trained on
    every token in id order (10 k-means iterations, inner product) holding 8-bit scalar codes of every dimension
    (sq8), 4-bit product codes of 4-d pieces (pq4) or of single dimensions (sq4), each token under its id."""
    index, table = two_shards
    build_ann(index, nlist=8, codes=codes)
    x = table.tokens.astype(np.float32)
    quantizer = faiss.IndexFlatIP(D)
    if codes == "sq8":
        ref = faiss.IndexIVFScalarQuantizer(quantizer, D, 8, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    else:
        ref = faiss.IndexIVFPQFastScan(quantizer, D, 8, D // 4 if codes == "pq4" else D, 4, faiss.METRIC_INNER_PRODUCT)
    ref.cp.niter = 10
    ref.train(x)
    ref.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    built = faiss.read_index(str(index / "ann.faiss"))
    assert built.metric_type == faiss.METRIC_INNER_PRODUCT
    assert np.array_equal(faiss.serialize_index(built), faiss.serialize_index(ref))


def test_build_in_chunks_and_from_a_small_sample(two_shards, tmp_path):
    index, table = two_shards
    build_ann(index, nlist=8, codes="sq8", chunk=7)
    chunked = faiss.read_index(str(index / "ann.faiss"))
    build_ann(index, nlist=8, codes="sq8")
    whole = faiss.read_index(str(index / "ann.faiss"))
    q = table.tokens[:20].astype(np.float32)
    chunked.nprobe = whole.nprobe = 8
    assert chunked.ntotal == whole.ntotal == len(table.tokens)
    assert np.array_equal(chunked.search(q, 10)[1], whole.search(q, 10)[1])  # same ids, same codes
    n_tokens, parts = len(table.tokens), []
    for shard_videos in (range(30), range(30, 50)):
        for s in (0, 1):
            parts.append(int(np.sum((table.set == s) & np.isin(table.owner, list(shard_videos)))))
    for take in (9, 2):  # the sample: per part min(len, max(1, round(take * len / n_tokens))) tokens (2: a part's
        # share rounds to 0, and it still gives 1); nlist is capped at the sample's size
        sample = sum(min(p, max(1, round(take * p / n_tokens))) for p in parts)
        assert build_ann(index, nlist=64, codes="sq8", train_size=take)["nlist"] == sample < 64
    assert [round(2 * p / n_tokens) for p in parts].count(0) >= 1
    default = int(4 * math.sqrt(n_tokens))  # 4 sqrt(tokens) lists
    assert build_ann(index, codes="sq8")["nlist"] == default
    build_ann(index, nlist=8, codes="sq8", train_size=60)
    first = (index / "ann.faiss").read_bytes()
    build_ann(index, nlist=8, codes="sq8", train_size=60)
    assert (index / "ann.faiss").read_bytes() == first  # the sample is drawn from `seed`: the same lists
    build_ann(index, nlist=8, codes="sq8", train_size=60, seed=1)
    assert (index / "ann.faiss").read_bytes() != first


def test_default_nlist_of_a_small_index(tmp_path):
    """17 tokens: int(4 sqrt(17)) = 16 lists (at least 16, at most one per sampled token)."""
    rng = np.random.default_rng(1)
    videos = [{"clip": unit(rng.standard_normal((4, D))), "frame": unit(rng.standard_normal((n, D)))} for n in (6, 3)]
    index = make_index(tmp_path, [videos])
    assert build_ann(index, codes="sq8")["nlist"] == 16
    small = make_index(tmp_path / "small", [videos[1:]])  # 7 tokens: 7 lists
    assert build_ann(small, codes="sq8")["nlist"] == 7


def test_build_refusals(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    index = make_index(tmp_path / "a", [random_videos(rng, 4)])
    with pytest.raises(IndexError_, match=r"^codes 'pq8': expected one of sq8, pq4, sq4$"):
        build_ann(index, codes="pq8")
    exact = make_index(tmp_path / "b", [random_videos(rng, 4)], normalized=False)
    with pytest.raises(IndexError_) as e:
        build_ann(exact)
    assert str(e.value) == f"{exact}: this model does not score by max-similarity; its index is searched exactly"
    empty = make_index(tmp_path / "c", [])
    with pytest.raises(IndexError_) as e:
        build_ann(empty)
    assert str(e.value) == f"{empty}: empty index"
    odd = make_index(tmp_path / "d", [random_videos(rng, 4, dim=6)])
    with pytest.raises(IndexError_) as e:
        build_ann(odd, codes="pq4")
    assert str(e.value) == f"{odd}: pq4 codes need a token size divisible by 4, got 6"
    build_ann(odd, codes="sq8")  # any width for sq8 and sq4
    build_ann(odd, codes="sq4", nlist=2)

    (index / "ann.faiss").mkdir()
    with pytest.raises(OutputError) as e:
        build_ann(index, codes="sq8")
    assert str(e.value) == f"{index / 'ann.faiss'}: ANN stage is a directory, expected a file path"
    (index / "ann.faiss").rmdir()
    manifest = json.loads((index / "manifest.json").read_text())
    del manifest["normalized"]  # an index written before the flag: scored by max-similarity
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert build_ann(index, codes="sq8")["n_videos"] == 4
    (index / "ann.faiss").unlink()
    (index / "ann.json").unlink()

    first = "Error in faiss::FileIOWriter: No space left on device " + "x" * 200

    def full_disk(ann, path):
        raise RuntimeError(first + "\nmore detail")

    monkeypatch.setattr(faiss, "write_index", full_disk)
    with pytest.raises(OutputError) as e:
        build_ann(index, codes="sq8")
    assert str(e.value) == f"{index / 'ann.faiss'}: cannot write ({first[:200]})"  # the first line, 200 characters
    assert not (index / "ann.json").exists() and not (index / "ann.faiss").exists()


# ------------------------------------------------------------------------------------------------ reading
def test_token_ann_reads_what_was_built(two_shards):
    index, table = two_shards
    build_ann(index, nlist=8, codes="pq4")
    t = TokenANN(index, {"frame": 0.4, "other": 9.0}, [])
    assert t.names == ["clip", "frame"] and t.weights.tolist() == [0.0, 0.4]  # per set in the ANN's order, 0 if absent
    assert t.part_starts.tolist() == t.meta["part_starts"] and t.part_sets.tolist() == [0, 1, 0, 1]
    assert t.codes == "pq4" and t.n_videos == 50 and t.shards == []
    assert t.sizes() == ann_sizes(50, 8) and t.sizes(5, 6, 7) == AnnSizes(5, 6, 7)
    assert t.lists is None  # no shards given: the lists are not read
    manifest = read_manifest(index)
    assert t.covers(manifest)
    assert not t.covers({**manifest, "shards": manifest["shards"][:1]})  # `index add` or remove since
    assert not t.covers({**manifest, "token_sets": {"frame": {}, "clip": {}}})
    assert not t.covers({**manifest, "n_videos": 49})
    (index / "ann.json").write_text(json.dumps({**t.meta, "codes": "pq3"}))
    with pytest.raises(IndexError_) as e:
        TokenANN(index, {}, [])
    assert str(e.value) == (f"{index / 'ann.json'}: codes 'pq3', expected one of sq8, pq4, sq4 (rebuild it with "
                            "`prvr index ann`)")
    old = {k: v for k, v in t.meta.items() if k not in ("part_starts", "part_sets", "codes", "lists")}
    (index / "ann.json").write_text(json.dumps(old))
    t = TokenANN(index, {}, [])  # an ANN stage of an older release: one part, sq8
    assert t.part_starts.tolist() == [0] and t.part_sets.tolist() == [0] and t.codes == "sq8"
    assert not t.covers(manifest)


def test_token_ann_refuses_what_does_not_agree(two_shards, tmp_path):
    index, _ = two_shards
    build_ann(index, nlist=8, codes="sq8")
    meta = json.loads((index / "ann.json").read_text())
    owners = np.load(index / "ann.owners.npy")
    disagree = f"{index / 'ann.json'}: corrupt ANN stage (its parts do not agree; rebuild it with `prvr index ann`)"

    def refused(message):
        with pytest.raises(IndexError_) as e:
            TokenANN(index, WEIGHTS, [])
        assert str(e.value) == message

    try:
        for bad in ([1], {**meta, "shards": "x"}, {**meta, "token_sets": None}, {**meta, "n_videos": 50.0},
                    {k: v for k, v in meta.items() if k != "n_videos"}, {**meta, "n_videos": int(owners.max())}):
            (index / "ann.json").write_text(json.dumps(bad))
            refused(disagree)
        (index / "ann.json").write_text(json.dumps(meta))
        TokenANN(index, WEIGHTS, [])  # the last video owns tokens: n_videos = max owner + 1 is fine
        for bad in (owners[:-1], owners[None], owners.astype(np.float32), np.where(owners == 0, -1, owners)):
            np.save(index / "ann.owners.npy", bad)
            refused(disagree)
        np.save(index / "ann.owners.npy", owners)
        (index / "ann.json").write_text("{")
        refused(f"{index}: corrupt ANN stage (JSONDecodeError; rebuild it with `prvr index ann`)")
        (index / "ann.json").write_bytes(b"\xff")
        refused(f"{index}: corrupt ANN stage (UnicodeDecodeError; rebuild it with `prvr index ann`)")
        (index / "ann.json").unlink()
        refused(f"{index}: corrupt ANN stage (FileNotFoundError; rebuild it with `prvr index ann`)")
    finally:
        np.save(index / "ann.owners.npy", owners)
        (index / "ann.json").write_text(json.dumps(meta))
    (index / "ann.faiss").write_bytes(b"not faiss")
    refused(f"{index}: corrupt ANN stage (RuntimeError; rebuild it with `prvr index ann`)")
    build_ann(index, nlist=8, codes="sq8")
    (index / "ann.owners.npy").write_bytes(b"junk")
    refused(f"{index}: corrupt ANN stage (ValueError; rebuild it with `prvr index ann`)")
    build_ann(index, nlist=8, codes="sq8")


def test_exact_rescoring_from_the_stored_tokens(two_shards):
    index, table = two_shards
    build_ann(index, nlist=8, codes="pq4")
    t = tann(index)
    rng = np.random.default_rng(3)
    vectors = unit(rng.standard_normal((3, D))).astype(np.float32)
    n = len(table.tokens)
    ids = np.stack([rng.permutation(n)[:12] for _ in range(3)])  # tokens of every part, in no order
    ids[0, 3] = ids[2, 0] = ids[2, 11] = -1  # none returned there
    ids[1, :4] = ids[0, 4:8]  # the same token for two rows
    got = t._exact(vectors, ids)
    want = np.where(ids >= 0, np.einsum("ukd,ud->uk", table.tokens[np.maximum(ids, 0)], vectors), -np.inf)
    assert got.dtype == np.float32 and got.shape == (3, 12)
    assert np.array_equal(np.isinf(got), ids < 0)
    np.testing.assert_allclose(got[ids >= 0], want[ids >= 0], atol=1e-6, rtol=0)  # float32 dots of float16 tokens
    assert len({int(np.searchsorted(t.part_starts, i, "right")) for i in ids[ids >= 0]}) == 4  # all four parts read
    assert np.array_equal(t._exact(vectors.astype(np.float64), ids), got)  # float64 rows are read as float32
    only_last = np.array([[n - 1, -1], [-1, -1]])
    np.testing.assert_allclose(t._exact(vectors[:2], only_last)[0, 0], table.tokens[n - 1] @ vectors[0], atol=1e-6)
    assert np.all(np.isneginf(t._exact(vectors[:2], only_last).reshape(-1)[1:]))


# ------------------------------------------------------------------------------------------------ candidates
def candidates_by_hand(t, table, q, sizes):
    """The module doc's bound, row by row: a row m aimed at set s with scale c_m = w_s a_m searches its `tokens`
    nearest tokens (pq4: REFINE times as many by code, the best `tokens` by exact similarity); t_m is the least
    similarity retrieved; a video gains c_m (best retrieved s token - t_m). The `videos` largest bounds, sorted."""
    bound = defaultdict(float)
    t.ann.nprobe = sizes.nprobe
    for m in range(q.vectors.shape[1]):
        a, target = float(q.weights[0, m]), q.targets[m]
        if a <= 0 or target not in t.names:
            continue
        s = t.names.index(target)
        c = a * t.weights[s]
        if c <= 0:
            continue
        row = q.vectors[0, m].numpy().astype(np.float32)[None]
        if t.codes == "sq8":
            sims, ids = t._search(row, sizes.tokens, sizes.nprobe)  # FAISS (in shares with threads: tested above)
            sims, ids = sims[0][ids[0] >= 0], ids[0][ids[0] >= 0]
        else:
            _, ids = t._search(row, sizes.tokens * 4, sizes.nprobe)
            ids = ids[0][ids[0] >= 0]
            sims = table.tokens[ids] @ row[0].astype(np.float64)
            order = np.argsort(-sims)[:sizes.tokens]
            sims, ids = sims[order], ids[order]
        if not len(ids):
            continue
        best = {}
        for sim, i in zip(sims, ids, strict=True):
            if table.set[i] == s:
                v = int(table.owner[i])
                best[v] = max(best.get(v, -np.inf), float(sim))
        for v, sim in best.items():
            bound[v] += c * (sim - float(sims.min()))
    ranked = sorted(bound, key=lambda v: -bound[v])[:sizes.videos]
    return sorted(ranked), bound


def queries(rng, n):
    """Queries of several shapes: one vector for both sets; two weighted rows (one dead); rows aimed at one set,
    at a set the index lacks, and twice at the same set."""
    out = []
    for i in range(n):
        v = torch.from_numpy(unit(rng.standard_normal((3, D))).astype(np.float32))
        kind = i % 4
        if kind == 0:
            out.append(QueryRepr.single(v[:1], ("clip", "frame")))
        elif kind == 1:
            out.append(QueryRepr(v[None], torch.tensor([[0.7, 0.0, 1.3]]), ("clip", "frame", "frame")))
        elif kind == 2:
            out.append(QueryRepr(v[None], torch.tensor([[1.0, 2.0, 0.5]]), ("frame", "audio", "clip")))
        else:
            out.append(QueryRepr(v[None, :2], torch.tensor([[0.5, 1.5]]), ("clip", "clip")))
    return out


@pytest.mark.parametrize("codes", ["sq8", "sq4"])
def test_search_split_over_threads_finds_the_same_tokens(two_shards, codes):
    """With several threads the probed lists are searched in shares, one FAISS query each, and merged: the same
    tokens and similarities as one search, for each vector, also where fewer than k are found."""
    import faiss

    index, table = two_shards
    build_ann(index, nlist=8, codes=codes)
    t = TokenANN(index, {"clip": 0.6, "frame": 0.4}, [])
    x = table.tokens[:3].astype(np.float32)
    before = faiss.omp_get_max_threads()
    try:
        for k, nprobe in ((20, 5), (500, 3), (7, 8), (20, 7), (100, 8)):  # (20, 7): shares of 2, 2 and 3 lists
            faiss.omp_set_num_threads(1)
            s1, i1 = t._search(x, k, nprobe)
            assert s1.shape == i1.shape == (3, k)
            for threads in (2, 3, 9):
                faiss.omp_set_num_threads(threads)
                s2, i2 = t._search(x, k, nprobe)
                assert s2.shape == i2.shape == (3, k)
                for u in range(3):
                    f1, f2 = i1[u] >= 0, i2[u] >= 0
                    np.testing.assert_allclose(np.sort(s1[u][f1]), np.sort(s2[u][f2]), rtol=0, atol=1e-6)
                    last = s1[u][f1].min()  # tokens tied with the last one kept may be either (sq4's codes tie)
                    assert set(i1[u][f1 & (s1[u] > last + 1e-6)]) == set(i2[u][f2 & (s2[u] > last + 1e-6)])
                    assert (i1[u] < 0).sum() == (i2[u] < 0).sum()
        assert (i1 < 0).sum() == 0 and (t._search(x, 500, 3)[1] < 0).any()  # 500 > the tokens of 3 lists
    finally:
        faiss.omp_set_num_threads(before)


@pytest.mark.parametrize("codes", ["sq8", "pq4"])
def test_candidates_are_the_bound_by_hand(two_shards, codes):
    index, table = two_shards
    build_ann(index, nlist=8, codes=codes)
    t = tann(index)
    rng = np.random.default_rng(4)
    seen_cut = 0
    for q in queries(rng, 12):
        for sizes in (AnnSizes(10, 6, 3), AnnSizes(25, 8, 8), AnnSizes(6, 50, 2), AnnSizes(40, 12, 1),
                      AnnSizes(1, 5, 8), AnnSizes(2, 5, 8), AnnSizes(60, 1, 8), AnnSizes(60, 2, 8)):
            want, bound = candidates_by_hand(t, table, q, sizes)
            t.ann.nprobe = 8 if sizes.nprobe != 8 else 1  # candidates must set the lists probed itself
            got = t.candidates(q, sizes)
            assert got.dtype == np.int64 and got.tolist() == want, (codes, sizes)
            seen_cut += len(bound) > sizes.videos
    assert seen_cut >= 24  # the video budget cut in many of them


@pytest.mark.parametrize("codes", ["sq8", "pq4"])
def test_candidates_cut_from_hundreds_of_videos(tmp_path, codes):
    """600 videos of one clip cell and one frame, every token retrieved: the budget keeps the best bounds (numpy
    partitions arrays this long by introselect, whose order before the cut is arbitrary)."""
    rng = np.random.default_rng(5)
    layouts = {"clip": TokenLayout(1), "frame": TokenLayout(1, ragged=True)}
    videos = [{"clip": unit(rng.standard_normal((1, D))), "frame": unit(rng.standard_normal((1, D)))}
              for _ in range(600)]
    index = make_index(tmp_path, [videos[:350], videos[350:]], layouts=layouts)
    build_ann(index, nlist=4, codes=codes)
    t, table = tann(index), Table(index)
    for q in queries(rng, 4):
        for sizes in (AnnSizes(300, 1, 4), AnnSizes(300, 2, 4), AnnSizes(300, 40, 4), AnnSizes(1200, 450, 4)):
            want, bound = candidates_by_hand(t, table, q, sizes)
            assert len(bound) > sizes.videos
            assert t.candidates(q, sizes).tolist() == want, (codes, sizes)


def bare_index(tmp_path, videos, layouts):
    """An index whose ANN lists hold every token exactly (one flat list, float32 inner products)."""
    index = make_index(tmp_path, [videos], layouts=layouts)
    build_ann(index, nlist=1, codes="sq8")
    t = tann(index)
    flat = faiss.IndexIVFFlat(faiss.IndexFlatIP(4), 4, 1, faiss.METRIC_INNER_PRODUCT)
    table = Table(index)
    flat.train(table.tokens.astype(np.float32))
    flat.add_with_ids(table.tokens.astype(np.float32), np.arange(len(table.tokens), dtype=np.int64))
    t.ann = flat
    return t


def e(*xs):
    return np.array(xs, dtype=np.float64)


def test_candidates_by_hand_on_planted_tokens(tmp_path):
    """Query e0. Retrieved with 3 tokens: v0's clip cell (cos 1), v1's frame (0.875), v2's frame (0.75): threshold
    0.75. Bounds: v0 0.6 (1 - 0.75) = 0.15; v1 0.4 (0.875 - 0.75) = 0.05; v2 0; v3 (clip 0.5, not retrieved)
    is no candidate."""
    layouts = {"clip": TokenLayout(2), "frame": TokenLayout(2, ragged=True)}
    s875, s75, s5 = math.sqrt(1 - 0.875**2), math.sqrt(1 - 0.75**2), math.sqrt(0.75)
    videos = [{"clip": np.stack([e(1, 0, 0, 0), e(0, 1, 0, 0)]), "frame": np.stack([e(0, 0, 1, 0)])},
              {"clip": np.stack([e(0, 0, 0, 1), e(0, 0, 0, -1)]), "frame": np.stack([e(0.875, s875, 0, 0)])},
              {"clip": np.stack([e(0, -1, 0, 0), e(0, 0, -1, 0)]), "frame": np.stack([e(0.75, 0, s75, 0)])},
              {"clip": np.stack([e(0.5, 0, 0, s5), e(-1, 0, 0, 0)]), "frame": np.stack([e(0, 0, 0, 1), e(0, 1, 0, 0)])}]
    t = bare_index(tmp_path, videos, layouts)
    q = torch.tensor([[1.0, 0, 0, 0]])
    both = QueryRepr.single(q, ("clip", "frame"))
    assert t.candidates(both, AnnSizes(3, 10, 1)).tolist() == [0, 1, 2]
    assert t.candidates(both, AnnSizes(3, 2, 1)).tolist() == [0, 1]  # the two largest bounds
    assert t.candidates(both, AnnSizes(3, 1, 1)).tolist() == [0]
    assert t.candidates(both, AnnSizes(4, 10, 1)).tolist() == [0, 1, 2, 3]  # 4 tokens reach v3's clip cell
    frame_only = QueryRepr.single(q, ("frame",))
    assert t.candidates(frame_only, AnnSizes(3, 1, 1)).tolist() == [1]  # v0's clip cell is not a frame
    dead = QueryRepr(q[:, None].expand(1, 2, 4), torch.tensor([[1.0, 0.0]]), ("clip", "frame"))
    assert t.candidates(dead, AnnSizes(3, 10, 1)).tolist() == [0]  # the frame row has weight 0
    # a stronger clip row: v0 gains 2 * 0.6 * 0.25 = 0.3, v1 0.4 * 0.125 = 0.05, v2 0 ...
    two = QueryRepr(q[:, None].expand(1, 2, 4).clone(), torch.tensor([[2.0, 1.0]]), ("clip", "frame"))
    assert t.candidates(two, AnnSizes(3, 2, 1)).tolist() == [0, 1]
    # ... and with the frame set's weight raised to 4, v1 gains 4 * 0.125 = 0.5 and comes first
    t.weights = np.array([0.6, 4.0])
    assert t.candidates(two, AnnSizes(3, 1, 1)).tolist() == [1]
    t.weights = np.array([0.0, 0.0])  # no set counts: nothing to rank
    assert t.candidates(both, AnnSizes(3, 10, 1)).tolist() == []
    t.weights = np.array([0.6, 0.4])
    for nothing in (QueryRepr.single(q, ("audio",)), QueryRepr(q[:, None], torch.zeros(1, 1), ("clip",))):
        got = t.candidates(nothing, AnnSizes(3, 10, 1))
        assert got.dtype == np.int64 and got.tolist() == []
    assert t.candidates(both, AnnSizes(30, 10, 1)).tolist() == [0, 1, 2, 3]  # more tokens asked than exist


def test_candidates_read_the_first_token_as_its_own(tmp_path):
    """Token 0 (the first video's only frame, its own part when the shard holds one video) is the video's and the
    set's like any other: a query at it finds video 0 by its frame, not its neighbour's owner or set."""
    layouts = {"frame": TokenLayout(2, ragged=True), "clip": TokenLayout(2)}
    x = np.eye(4)
    one = {"frame": x[:1], "clip": np.stack([x[1], -x[0]])}  # v0: frame e0 (token 0), clip cells e1, -e0
    other = {"frame": np.stack([-x[0], x[2]]), "clip": np.stack([x[3], -x[3]])}
    q = QueryRepr.single(torch.tensor([[1.0, 0, 0, 0]]), ("frame",))
    for shards in ([[one, other]], [[one], [other]]):  # token 1 is v1's frame; token 1 is v0's clip cell
        index = make_index(tmp_path / str(len(shards)), shards, layouts=layouts)
        build_ann(index, nlist=1, codes="sq8")
        t = tann(index)
        t.ann.nprobe = 1
        assert t.candidates(q, AnnSizes(1, 5, 1)).tolist() == [0]  # the nearest token only


def test_build_one_token_set_and_checks_the_layouts(tmp_path):
    rng = np.random.default_rng(8)
    clip_only = {"clip": TokenLayout(4)}
    index = make_index(tmp_path / "a", [[{"clip": unit(rng.standard_normal((4, D)))} for _ in range(5)]],
                       layouts=clip_only, weights={"clip": 1.0})
    meta = build_ann(index, nlist=4, codes="sq8")  # one shard, one set: one part
    assert meta["n_tokens"] == 20 and meta["part_starts"] == [0] and meta["token_sets"] == ["clip"]
    videos = random_videos(rng, 3)
    videos[1]["clip"] = videos[1]["clip"][:3]  # 3 clip cells where the layout has 4
    bad = make_index(tmp_path / "b", [videos])
    with pytest.raises(IndexError_, match=r"corrupt shard \(token set 'clip': videos with 3\.\.4 tokens, expected 4\)$"):
        build_ann(bad, nlist=4, codes="sq8")
