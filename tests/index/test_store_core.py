"""The index store on its own, in process and fast (no model): what a manifest and a shard must hold to be
read, shard names, removing videos, non-finite tokens, and discarding a failed build. With
tests/index/test_search_core.py these are the tests `make mutate` runs on prvr.index.store."""

import json
import re
import warnings

import numpy as np
import pytest

from prvr.index import store
from prvr.models.base import TokenLayout

LAYOUTS = {"clip": TokenLayout(4), "frame": TokenLayout(8, ragged=True)}
D = 6


def videos(n: int, frames=(3, 5, 8), seed: int = 0) -> tuple[dict[str, list[np.ndarray]], list[dict]]:
    """n videos: 4 clip tokens each, a cycling number of frame tokens; values that identify video and row."""
    rng = np.random.default_rng(seed)
    counts = [frames[i % len(frames)] for i in range(n)]
    sets = {"clip": [rng.standard_normal((4, D)) for _ in range(n)],
            "frame": [rng.standard_normal((c, D)) for c in counts]}
    return sets, [{"duration": float(c), "n_raw_frames": c} for c in counts]


@pytest.fixture
def index(tmp_path):
    """An index of 3 shards (3 + 2 + 3 videos)."""
    ckpt = tmp_path / "weights.bin"
    ckpt.write_bytes(b"weights")
    path = tmp_path / "idx"
    m = store.create_index(path, ckpt, {"model": {"name": "maxsim"}}, LAYOUTS, {"clip": 0.5, "frame": 0.5}, True,
                           None, media_roots=["/b", "/a"])
    assert (path / "model.safetensors").read_bytes() == b"weights"
    assert m == {"format": store.FORMAT, "config": {"model": {"name": "maxsim"}},
                 "token_sets": {k: v.to_dict() for k, v in LAYOUTS.items()}, "score_weights": {"clip": 0.5, "frame": 0.5},
                 "normalized": True, "text_encoder": None, "media_roots": ["/a", "/b"], "shards": [], "n_videos": 0}
    all_sets = {}
    for first, n in ((0, 3), (3, 2), (5, 3)):
        sets, meta = videos(n, seed=first)
        m = store.append_shard(path, m, [f"v{first + i}" for i in range(n)], sets, meta)
        for i in range(n):
            all_sets[f"v{first + i}"] = {k: v[i] for k, v in sets.items()}
    return path, all_sets


def tokens_of(path, manifest) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name in manifest["shards"]:
        s = store.load_shard(path / name, list(LAYOUTS), store.layouts_of(manifest))
        for i, v in enumerate(s.ids):
            out[v] = {k: np.asarray(st.tokens[st.offsets[i]:st.offsets[i + 1]]) for k, st in s.sets.items()}
    return out


def test_round_trip_keeps_every_video_in_order(index):
    path, want = index
    m = store.read_manifest(path)
    assert m["shards"] == ["shard-00000", "shard-00001", "shard-00002"] and m["n_videos"] == 8
    got = tokens_of(path, m)
    assert list(got) == [f"v{i}" for i in range(8)]
    shard = store.load_shard(path / "shard-00001", list(LAYOUTS))
    assert shard.path == path / "shard-00001" and isinstance(shard.sets["frame"].tokens, np.memmap)  # not read in
    for v, sets in want.items():
        for k, t in sets.items():
            assert np.array_equal(got[v][k], t.astype(np.float16)), (v, k)


def test_next_shard_name_is_after_every_listed_one():
    assert store.next_shard_name({"shards": []}) == "shard-00000"
    assert store.next_shard_name({"shards": ["shard-00000", "shard-00007", "shard-00003"]}) == "shard-00008"
    assert store.next_shard_name({"shards": ["shard-00000-r001-00002", "custom"]}) == "shard-00003"


def test_thumb_key_is_a_stable_short_hash():
    key = store.thumb_key("a/b c?")
    assert key == store.thumb_key("a/b c?") and len(key) == 20 and key != store.thumb_key("a/b c")
    assert all(ch in "0123456789abcdef" for ch in key)


def test_remove_videos_rewrites_shards_and_keeps_the_rest(index):
    path, want = index
    m = store.read_manifest(path)
    (path / store.THUMBS / store.thumb_key("v1")).mkdir(parents=True)
    (path / store.THUMBS / store.thumb_key("v0")).mkdir(parents=True)
    m2, removed = store.remove_videos(path, m, ["v1", "v3", "v4", "nope"])
    assert sorted(removed) == ["v1", "v3", "v4"] and m2["n_videos"] == 5
    # shard 0 rewritten under a new name after every listed one, shard 1 emptied and dropped, shard 2 untouched
    assert m2["shards"] == ["shard-00003", "shard-00002"] and store.read_manifest(path) == m2
    assert not (path / "shard-00000").exists() and not (path / "shard-00001").exists()
    assert not (path / store.THUMBS / store.thumb_key("v1")).exists()
    assert (path / store.THUMBS / store.thumb_key("v0")).exists()
    got = tokens_of(path, m2)
    assert list(got) == ["v0", "v2", "v5", "v6", "v7"]
    for v in got:
        for k in LAYOUTS:
            assert np.array_equal(got[v][k], want[v][k].astype(np.float16)), (v, k)
    meta = json.loads((path / "shard-00003" / "meta.json").read_text())
    assert meta == [{"duration": 3.0, "n_raw_frames": 3}, {"duration": 8.0, "n_raw_frames": 8}]
    assert store.next_shard_name(m2) == "shard-00004"


def test_remove_videos_from_two_shards_names_each_new_one_after_the_last(index):
    path, _ = index
    m, removed = store.remove_videos(path, store.read_manifest(path), ["v0", "v5"])
    assert removed == ["v0", "v5"] and m["shards"] == ["shard-00003", "shard-00001", "shard-00004"]
    assert list(tokens_of(path, m)) == ["v1", "v2", "v3", "v4", "v6", "v7"]


def test_remove_videos_without_a_match_changes_nothing(index):
    path, _ = index
    m = store.read_manifest(path)
    before = (path / "manifest.json").read_bytes()
    m2, removed = store.remove_videos(path, m, ["nope"])
    assert removed == [] and m2 == m and (path / "manifest.json").read_bytes() == before


def test_nonfinite_rows_in_chunks(monkeypatch):
    t = np.zeros((10, 3), np.float16)
    t[2, 1], t[7, 0], t[9, 2] = np.nan, np.inf, -np.inf
    t[4, 0] = 65504  # the largest finite float16: not flagged
    assert store.nonfinite_rows(t).tolist() == [2, 7, 9]
    monkeypatch.setattr(store, "FINITE_CHUNK", 6)  # 2 rows a chunk: rows found across chunks
    assert store.nonfinite_rows(t).tolist() == [2, 7, 9]
    assert store.nonfinite_rows(np.ones((4, 3), np.float16)).tolist() == []
    none = store.nonfinite_rows(np.zeros((0, 3), np.float16))
    assert none.tolist() == [] and none.dtype == np.int64
    assert store.nonfinite_rows(np.zeros((3, 0), np.float16)).tolist() == []
    first = np.ones((4, 3), np.float16)
    first[0, 0] = np.nan
    assert store.nonfinite_rows(first).tolist() == [0]
    payload = np.ones((4, 3), np.float16)
    payload.view(np.int16)[1, 2] = 0x7C01  # a NaN whose lowest mantissa bit is set (exponent bits all ones)
    payload.view(np.int16)[3, 0] = np.int16(-1024)  # 0xFC00: -Inf
    assert store.nonfinite_rows(payload).tolist() == [1, 3]


def test_load_shard_refuses_tokens_it_cannot_trust(index):
    path, _ = index
    m = store.read_manifest(path)
    shard, names, layouts = path / "shard-00000", list(LAYOUTS), store.layouts_of(m)
    tokens = np.load(shard / "frame.tokens.npy")
    offsets = np.load(shard / "frame.offsets.npy")  # [0, 3, 8, 16]
    clip = np.load(shard / "clip.tokens.npy")

    def refused(file, content, what, lay=layouts):
        """`what`: the whole message when it starts with the shard's path, else a regex found in it."""
        before = (shard / file).read_bytes()
        np.save(shard / file, content, allow_pickle=True)
        try:
            with pytest.raises(store.IndexError_) as e:
                store.load_shard(shard, names, lay)
            if what.startswith(str(shard)):
                assert str(e.value) == what
            else:
                assert re.search(what, str(e.value)), (what, str(e.value))
        finally:
            (shard / file).write_bytes(before)

    bad = tokens.copy()
    bad[4, 2] = np.nan
    refused("frame.tokens.npy", bad, "video 'v1' has NaN/Inf tokens")
    bad = tokens.copy()
    bad[3, 0] = np.nan  # the first row of v1 (offsets 0, 3, 8, 16)
    refused("frame.tokens.npy", bad, f"{shard}: corrupt shard (token set 'frame': video 'v1' has NaN/Inf tokens; "
                                     "rebuild the index)")
    bad = tokens.copy()
    bad[15, 0] = np.inf
    refused("frame.tokens.npy", bad, "video 'v2' has NaN/Inf tokens")
    refused("frame.tokens.npy", tokens.astype(np.float32),
            f"{shard}: corrupt shard (token set 'frame': float32 tokens of width 6, expected float16 rows)")
    refused("frame.tokens.npy", tokens[:, :0], "tokens of width 0")
    refused("frame.tokens.npy", tokens[:, :4], f"{shard}: corrupt shard (token sets of different widths [4, 6])")
    refused("frame.offsets.npy", offsets.astype(np.float64), "offsets do not match")
    refused("frame.offsets.npy", offsets[None],
            f"{shard}: corrupt shard (token set 'frame': offsets do not match 3 videos and 16 token rows)")
    refused("frame.offsets.npy", np.array([0, 5, 3, 16]), "offsets do not match", None)  # decreasing
    refused("frame.offsets.npy", np.array([0, 8, 16]), "offsets do not match", None)  # one video short, rows all there
    refused("frame.tokens.npy", tokens[0], "offsets do not match 3 videos and 6 token rows")  # a 1-d array
    refused("frame.tokens.npy", np.float16(1.0),
            f"{shard}: corrupt shard (token set 'frame': offsets do not match 3 videos and 0 token rows)")  # 0-d
    refused("clip.offsets.npy", np.array([0, 4, 8, 11]), "offsets do not match")  # 11 of 12 rows
    refused("clip.tokens.npy", clip[:8], "offsets do not match")
    refused("clip.offsets.npy", np.array([0, 4, 8, 12]),
            f"{shard}: corrupt shard (token set 'clip': videos with 4..4 tokens, expected 3)",
            {**layouts, "clip": TokenLayout(3)})
    refused("frame.offsets.npy", offsets, r"videos with 3..8 tokens, expected 1..7",
            {**layouts, "frame": TokenLayout(7, ragged=True)})
    refused("frame.offsets.npy", np.array([0, 0, 8, 16]), r"videos with 0..8 tokens, expected 1..8")
    refused("clip.offsets.npy", np.array([0, 3, 8, 12]), r"videos with 3..5 tokens, expected 4")
    pickled = np.array([{"a": 1}, None], dtype=object)  # never unpickled
    refused("frame.offsets.npy", pickled, f"{shard}: corrupt shard (ValueError: Object arrays cannot be loaded "
                                          "when allow_pickle=False)")
    refused("frame.tokens.npy", pickled, "Python objects in dtype")  # memory-mapped: objects cannot be either
    assert store.load_shard(shard, names, layouts).ids == ["v0", "v1", "v2"]
    assert store.load_shard(shard, names, {**layouts, "clip": TokenLayout(4, ragged=True)}).ids[0] == "v0"

    def refused_json(file, text, message):
        before = (shard / file).read_bytes()
        (shard / file).write_text(text)
        try:
            with pytest.raises(store.IndexError_) as e:
                store.load_shard(shard, names)
            assert str(e.value) == f"{shard / file}: {message}"
        finally:
            (shard / file).write_bytes(before)

    refused_json("ids.json", json.dumps(["v0", "v0", "v2"]), "a video id appears twice")
    refused_json("ids.json", json.dumps(["v0", "", "v2"]), "expected a list of video ids")
    refused_json("meta.json", json.dumps([{}, {"duration": -1}, {}]), "video 'v1': duration -1, expected a "
                 "positive number of seconds")
    refused_json("meta.json", json.dumps([{}, [], {}]), "expected 3 objects, one per video id")
    refused_json("meta.json", '[{}, {"duration": NaN}, {}]', "corrupt shard file (ValueError: NaN is not a number)")
    refused_json("ids.json", "[1,\n", "corrupt shard file (JSONDecodeError: Expecting value: line 2 column 1 (char 4))")
    (shard / "frame.tokens.npy").unlink()
    with pytest.raises(store.IndexError_, match=f"^{re.escape(str(shard))}: corrupt shard \\(FileNotFoundError: "):
        store.load_shard(shard, names)


def test_first_line_of_an_error():
    assert store._first_line(ValueError("x" * 300 + "\nsecond")) == "x" * 200
    assert store._first_line(ValueError("  \n ")) == "ValueError"


def test_tensor_view_shares_a_read_only_map_silently(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.float16).reshape(2, 3))
    a = np.load(tmp_path / "a.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about a non-writable array: not here
        t = store.tensor_view(a)
    assert t.tolist() == [[0, 1, 2], [3, 4, 5]] and t.data_ptr() == a.__array_interface__["data"][0]


def test_write_shard_refuses_non_finite_meta_and_leaves_nothing(tmp_path):
    sets, _ = videos(1)
    with pytest.raises(ValueError):
        store.write_shard(tmp_path, "shard-00000", ["v"], sets, [{"duration": float("nan")}])
    assert list(tmp_path.iterdir()) == []


def test_read_manifest_refuses_what_it_cannot_trust(index, tmp_path):
    path, _ = index
    mf = path / "manifest.json"
    good = json.loads(mf.read_text())

    def refused(manifest, what):
        mf.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
        with pytest.raises(store.IndexError_, match=what):
            store.read_manifest(path)

    refused({**good, "shards": ["shard-00000", "shard-00000"]}, "listed twice")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (path / "linked").symlink_to(outside)
    refused({**good, "shards": ["linked"]}, "lies outside the index directory")
    refused({**good, "token_sets": {"a/b": good["token_sets"]["clip"]}}, "not a plain name")
    refused({**good, "token_sets": {"clip": {"ragged": True}}}, r"token set layouts: KeyError")
    refused({**good, "token_sets": {"clip": {"cells": "x"}}}, r"token set layouts: ValueError")
    refused({**good, "token_sets": {"clip": []}}, r"token set layouts: AttributeError")
    refused({**good, "token_sets": {"clip": {"cells": None}}}, r"token set layouts: TypeError")
    for weights in ({"clip": -0.5}, {"other": 1.0}, {"clip": True}, [], {"clip": "1"}):
        refused(json.dumps({**good, "score_weights": weights}), "score_weights")
    refused({**good, "score_weights": {"clip": 0, "frame": 2}} | {"config": {"model": []}}, "config")
    refused({**good, "config": None}, "config")
    for roots in ("/a", ["relative"], [3]):
        refused({**good, "media_roots": roots}, "media_roots")
    for enc in ("minilm", {"kind": 3}, {}):
        refused({**good, "text_encoder": enc}, "text_encoder")
    refused('{"format": "prvr-index-2", "x": Infinity}', "corrupt manifest")
    mf.write_bytes(b"\xff\xfe")
    with pytest.raises(store.IndexError_, match="corrupt manifest"):
        store.read_manifest(path)
    mf.write_text(json.dumps({**good, "score_weights": {"clip": 0, "frame": 2}, "media_roots": ["/x"],
                              "text_encoder": {"kind": "minilm"}}))
    assert store.read_manifest(path)["score_weights"] == {"clip": 0, "frame": 2}
    mf.unlink()
    mf.mkdir()
    with pytest.raises(store.IndexError_, match="no manifest.json"):
        store.read_manifest(path)


def test_discard_empty_index(tmp_path):
    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"w")

    def make(name):
        return tmp_path / name, store.create_index(tmp_path / name, ckpt, {"model": {}}, LAYOUTS, {"clip": 1.0},
                                                   True, None)

    path, _ = make("created")
    store.discard_empty_index(path, created=True)
    assert not path.exists()
    path, _ = make("existing")  # a folder the user gave: only what the build wrote goes
    (path / "notes.txt").write_text("mine")
    (path / ".manifest.json.123.abc.tmp").write_text("")
    store.discard_empty_index(path, created=False)
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt"]
    path, _ = make("no-weights")  # the copy of the weights never made it: still discarded, no error
    (path / "model.safetensors").unlink()
    store.discard_empty_index(path, created=False)
    assert list(path.iterdir()) == []
    path, m = make("full")
    sets, meta = videos(1)
    store.append_shard(path, m, ["v"], sets, meta)
    store.discard_empty_index(path, created=True)  # it holds a shard: kept
    assert store.read_manifest(path)["n_videos"] == 1
    (path / "manifest.json").write_text("{")  # not a manifest this code can judge: kept
    store.discard_empty_index(path, created=True)
    assert (path / "manifest.json").exists()
    empty = tmp_path / "nothing"
    empty.mkdir()
    store.discard_empty_index(empty, created=True)  # no manifest at all: a build that failed before writing one
    assert not empty.exists()
