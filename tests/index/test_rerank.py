"""Stage 2's per-video lists (prvr.index.rerank) in process, against numpy: what `build_lists` stores, each row's
best similarity and best token per video (ragged sets, a video without tokens in a set, ties, several rows aimed
at different sets, subsets of videos), and every refusal with its whole message."""

import numpy as np
import pytest

from prvr.errors import PrvrError
from prvr.index.rerank import LISTS_FILE, VideoLists, build_lists
from prvr.index.store import IndexError_, Shard, ShardTokens

D = 6


def shard(rng, counts_per_set, tie=False):
    """A shard in memory: per set, (videos,) token counts -> float16 unit tokens."""
    sets = {}
    for name, counts in counts_per_set.items():
        tok = rng.standard_normal((int(sum(counts)), D))
        tok /= np.linalg.norm(tok, axis=1, keepdims=True)
        if tie and len(tok) > 3:
            tok[3] = tok[1]  # two equal tokens in the first video: the first of them is its best token
        sets[name] = ShardTokens(tok.astype(np.float16), np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    n = len(next(iter(counts_per_set.values())))
    return Shard(path=None, ids=[f"s{i}" for i in range(n)], sets=sets, meta=[{}] * n)


@pytest.fixture
def stored(tmp_path):
    rng = np.random.default_rng(0)
    shards = [shard(rng, {"clip": [4, 4, 4], "frame": [5, 0, 2]}, tie=True), shard(rng, {"clip": [4, 4],
                                                                                         "frame": [1, 6]})]
    names = ["clip", "frame"]
    assert build_lists(tmp_path, shards, names, D, chunk=3) == 12 + 8 + 7 + 7  # chunked: every token once
    counts = [np.concatenate([s.sets[n].counts for s in shards]) for n in names]
    tokens = {n: [np.asarray(s.sets[n].tokens[s.sets[n].offsets[i]:s.sets[n].offsets[i + 1]], np.float64)
                  for s in shards for i in range(len(s.ids))] for n in names}
    return tmp_path, counts, tokens


def want(tokens, rows, sets, videos, names=("clip", "frame")):
    best = np.full((len(rows), len(videos)), -np.inf)
    arg = np.zeros((len(rows), len(videos)), np.int64)
    for r, (row, s) in enumerate(zip(rows, sets, strict=True)):
        for j, v in enumerate(videos):
            t = tokens[names[s]][v]
            if len(t):
                sims = (t.astype(np.float32) @ row.astype(np.float32)).astype(np.float64)
                best[r, j], arg[r, j] = sims.max(), int(np.argmax(sims))
    return best, arg


def test_lists_hold_each_token_in_its_video_and_set(stored):
    import faiss

    path, counts, tokens = stored
    lists = faiss.read_index(str(path / LISTS_FILE))
    assert lists.nlist == 5 * 2 and lists.ntotal == 34
    inv = lists.invlists
    for v in range(5):
        for s, name in enumerate(("clip", "frame")):
            n = inv.list_size(v * 2 + s)  # list v * 2 + s: video v's tokens of set `name`
            assert n == counts[s][v]
            if n:
                ids = faiss.rev_swig_ptr(inv.get_ids(v * 2 + s), n)
                assert ids.tolist() == [v * 2 + s] * n  # each token's id: its list
                codes = faiss.rev_swig_ptr(inv.get_codes(v * 2 + s), n * D * 2).view(np.float16).reshape(n, D)
                assert np.array_equal(codes, tokens[name][v].astype(np.float16))


def test_best_and_best_token_per_row_and_video(stored):
    path, counts, tokens = stored
    vl = VideoLists(path / LISTS_FILE, counts)
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((4, D)).astype(np.float32) * np.array([[1.0], [0.5], [2.0], [0.3]], np.float32)
    sets = np.array([0, 1, 1, 0])
    for videos in (np.arange(5), np.arange(4), np.array([1, 3]), np.array([0]), np.array([1]), np.array([4])):
        best, arg = vl.best(rows, sets, videos, tokens=True)
        b, a = want(tokens, rows, sets, videos)
        np.testing.assert_allclose(best, b, rtol=0, atol=2e-6)
        assert best.dtype == np.float32 and arg.dtype == np.int64 and arg.tolist() == a.tolist()
        wide, _ = vl.best(rows.astype(np.float64), sets, videos)  # any float rows: handed to FAISS as float32
        assert np.array_equal(wide, best)
        only, none = vl.best(rows, sets, videos)
        assert none is None and np.array_equal(only, best)
        for parts in (1, 2, 3, 7):  # the videos in shares, one FAISS query each (more shares than videos: capped)
            split, split_arg = vl.best(rows, sets, videos, tokens=True, parts=parts)
            assert np.array_equal(split, best) and np.array_equal(split_arg, arg)
    best, _ = vl.best(rows, sets, np.arange(5))
    assert np.isneginf(best[1:3, 1]).all() and np.isfinite(best[[0, 3]]).all()  # video 1 has no frames
    tie = tokens["clip"][0][1].astype(np.float32)
    _, arg = vl.best(tie[None], np.array([0]), np.array([0]), tokens=True)
    assert arg.tolist() == [[1]]  # tokens 1 and 3 are equal: the first
    best, arg = vl.best(np.zeros((0, D), np.float32), np.zeros(0, np.int64), np.arange(5), tokens=True)
    assert best.shape == arg.shape == (0, 5)
    best, arg = vl.best(rows, sets, np.zeros(0, np.int64), tokens=True)
    assert best.shape == arg.shape == (4, 0)


def test_lists_that_do_not_match_the_index_are_refused(stored, tmp_path_factory):
    path, counts, _ = stored
    f = path / LISTS_FILE
    with pytest.raises(IndexError_, match=f"^{f}: stage-2 lists that do not match the index \\(rebuild them with "
                                          "`prvr index ann`\\)$"):
        VideoLists(f, [counts[0], counts[1] + 1])  # other counts
    with pytest.raises(IndexError_, match="do not match"):
        VideoLists(f, [np.concatenate([c, [0]]) for c in counts])  # another number of videos
    with pytest.raises(IndexError_, match="do not match"):
        VideoLists(f, counts[:1])  # another number of sets
    other = tmp_path_factory.mktemp("flat")
    import faiss

    faiss.write_index(faiss.IndexFlatIP(D), str(other / LISTS_FILE))
    with pytest.raises(IndexError_, match="do not match"):
        VideoLists(other / LISTS_FILE, counts)
    (other / LISTS_FILE).write_bytes(b"not an index")
    with pytest.raises(IndexError_, match=f"^{other / LISTS_FILE}: corrupt stage-2 lists \\(RuntimeError; rebuild them "
                                          "with `prvr index ann`\\)$"):
        VideoLists(other / LISTS_FILE, counts)
    with pytest.raises(IndexError_, match="corrupt stage-2 lists"):
        VideoLists(other / "missing", counts)
    assert issubclass(IndexError_, PrvrError)


def test_lists_of_another_index_are_refused_when_read(stored):
    """Same number of tokens per set, other videos' counts: the scan finds it out, never returns wrong maxima."""
    path, counts, _ = stored
    swapped = [counts[0], counts[1][[0, 1, 2, 4, 3]]]  # frames of videos 3 and 4 swapped: 7 and 7 -> equal totals
    swapped[1] = np.array([5, 0, 2, 6, 1])
    vl = VideoLists(path / LISTS_FILE, swapped)
    row = np.ones((1, D), np.float32)
    with pytest.raises(IndexError_, match="^stage-2 lists returned another number of tokens than the index holds "
                                          "\\(rebuild them with `prvr index ann`\\)$"):
        vl.best(row, np.array([1]), np.array([3]))
    vl = VideoLists(path / LISTS_FILE, [counts[0], np.array([5, 0, 2, 7, 0])])
    with pytest.raises(IndexError_, match="^stage-2 lists out of order or not the index's \\(rebuild them with "
                                          "`prvr index ann`\\)$"):
        vl.best(row, np.array([1]), np.array([3, 4]))


def test_one_video_of_one_set(tmp_path):
    rng = np.random.default_rng(3)
    one = shard(rng, {"clip": [3]})
    assert build_lists(tmp_path, [one], ["clip"], D) == 3
    vl = VideoLists(tmp_path / LISTS_FILE, [np.array([3])])
    assert vl.lists.nlist == 1 and vl.S == 1
    row = np.asarray(one.sets["clip"].tokens[2], np.float32)[None]
    best, arg = vl.best(row, np.array([0]), np.array([0]), tokens=True)
    assert arg.tolist() == [[2]] and best[0, 0] == pytest.approx(float(row[0] @ row[0]), abs=1e-6)


def test_a_failed_write_is_one_line_and_leaves_nothing(stored, monkeypatch):
    import faiss

    from prvr.errors import OutputError

    path, _, _ = stored
    (path / LISTS_FILE).unlink()
    first = "Error in faiss::FileIOWriter: No space left on device " + "x" * 200

    def full_disk(index, where):
        raise RuntimeError(first + "\nmore detail")

    monkeypatch.setattr(faiss, "write_index", full_disk)
    rng = np.random.default_rng(0)
    with pytest.raises(OutputError) as e:
        build_lists(path, [shard(rng, {"clip": [2]})], ["clip"], D)
    assert str(e.value) == f"{path / LISTS_FILE}: cannot write ({first[:200]})"  # the first line, 200 characters
    assert not (path / LISTS_FILE).exists() and not list(path.glob("*.tmp*"))
