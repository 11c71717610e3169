"""Exact search against the model's own scoring, in process and fast (an untrained tiny model over a small
synthetic split in several shards): scores, best tokens, moments in seconds, candidate subsets, the generic
`model.score` path, and the store's checks of what it reads. These are also the tests `make mutate` runs on
prvr.index.search and prvr.index.store."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from prvr.data.datasets import Batch
from prvr.data.layout import DatasetLayout
from prvr.index import store
from prvr.index.build import build_index
from prvr.index.search import Retriever
from prvr.models import build_model
from prvr.models.base import VideoRepr
from prvr.models.checkpoint import save_checkpoint
from prvr.models.presets import default_config
from prvr.synth.synthetic import FRAME_STEP, synthetic_info, write_synthetic
from tests.conftest import tiny_model_config


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("core-data")
    layout = write_synthetic(root, "tiny", scale=0.5)  # 24 / 8 / 8 videos, 6 to 150 frames
    cfg = default_config()
    cfg.model = tiny_model_config()
    cfg.data.root = str(root)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    for p in model.parameters():  # a spread of scores, as after training
        p.data.add_(0.05 * torch.randn_like(p))
    ckpt = root / "model.safetensors"
    save_checkpoint(ckpt, model, cfg)
    index = root / "index"
    build_index(ckpt, layout, "all", index, shard_size=16, progress=False)
    return root, layout, model, index


def stored_videos(r: Retriever) -> VideoRepr:
    """Every indexed video's stored (float16) tokens, padded back to the model's token sets."""
    return VideoRepr.cat([r._video_repr(s, np.arange(len(s.ids))) for s in r.shards])


def queries(r: Retriever, root, n=12):
    qids = [ln.split(" ", 1)[0] for split in ("train", "test")
            for ln in DatasetLayout(root, "charades").caption_file(split).read_text().splitlines()][:n]
    return qids, [r.embed(r.query_features(root, q)) for q in qids]


def test_scores_and_best_tokens_equal_the_model(small):
    root, _, model, index = small
    r = Retriever(index)
    assert len(r.shards) == 3 and len(r) == 40
    videos = stored_videos(r)
    lengths = videos.sets["frame"].mask.sum(1)
    assert lengths.min() < 32 < 128 <= lengths.max()  # short and long videos, padding in the frame max
    _, qs = queries(r, root)
    for q in qs:
        sc = r.scores(q)
        with torch.no_grad():
            want = model.score(q, videos)[0]
            per_set = model.set_scores(q, videos)
            best = model.best_tokens(q, videos)
        torch.testing.assert_close(sc.total, want, atol=2e-4, rtol=0)  # float16 tokens renormalised: measured 5e-5
        for name, w in model.score_weights().items():
            torch.testing.assert_close(sc.sets[name], w * per_set[name][0], atol=2e-4, rtol=0)
            assert torch.equal(sc.tokens[name], best[name][0]), name


def test_hits_rank_and_carry_moments_in_seconds(small):
    root, layout, _, index = small
    r = Retriever(index)
    info = {v: m["n_frames"] for v, m in synthetic_info(layout)["moments"].items()}
    qids, qs = queries(r, root)
    for q in qs:
        total = r.scores(q).total
        hits = r.search_repr(q, k=7, exact=True)
        order = torch.argsort(total, descending=True, stable=True)[:7]
        assert [h.video_id for h in hits] == [r.ids[i] for i in order]
        assert [h.score for h in hits] == pytest.approx(total[order].tolist(), abs=1e-6)
        for h in hits:
            n = info[h.video_id]
            lo, hi = r.layouts["clip"].frame_rows(n, h.tokens["clip"])
            assert h.frames == (lo, hi) and r.video(h.video_id)["n_raw_frames"] == n
            assert (h.start, h.end) == pytest.approx((lo * FRAME_STEP, hi * FRAME_STEP))
            f_lo, f_hi = r.layouts["frame"].frame_rows(n, h.tokens["frame"])
            want = ((f_lo + f_hi - 1) // 2 + 0.5) * FRAME_STEP  # the time stamp of the span's middle frame
            assert h.frame_time == pytest.approx(want)
            assert h.to_dict()["video_id"] == h.video_id
    assert len(r.search_repr(qs[0], k=len(r) + 5, exact=True)) == len(r)  # k beyond the collection: all of it


def test_candidate_subset_scores_equal_full_scores(small):
    root, _, _, index = small
    r = Retriever(index)
    _, qs = queries(r, root, 4)
    subset = np.array([0, 3, 15, 16, 17, 31, 39])  # across all three shards
    for q in qs:
        full, part = r.scores(q), r.scores(q, subset)
        assert torch.equal(part.total, full.total[subset])
        for name in r.layouts:
            assert torch.equal(part.tokens[name], full.tokens[name][subset])
    assert len(r.scores(qs[0], np.array([], dtype=np.int64)).total) == 0


def test_generic_score_path_equals_max_similarity_path(small):
    """A model that does not score by max-similarity is scored through model.score on the stored tokens; for a
    max-similarity model both paths must agree."""
    root, _, _, index = small
    fast, generic = Retriever(index), Retriever(index)
    generic.exact_only = True
    _, qs = queries(fast, root, 4)
    subset = np.array([1, 2, 20, 38])
    for q in qs:
        a, b = fast.scores(q), generic.scores(q)
        torch.testing.assert_close(b.total, a.total, atol=2e-4, rtol=0)  # measured 5e-5
        for name in fast.layouts:
            torch.testing.assert_close(b.sets[name], a.sets[name], atol=2e-4, rtol=0)
            assert torch.equal(b.tokens[name], a.tokens[name])
        torch.testing.assert_close(generic.scores(q, subset).total, a.total[subset], atol=2e-4, rtol=0)
        assert [h.video_id for h in generic.search_repr(q, 5)] == [h.video_id for h in fast.search_repr(q, 5)]


def test_query_input_checks(small):
    root, _, model, index = small
    r = Retriever(index)
    from prvr.errors import PrvrError

    for bad, msg in [(np.zeros((0, 40)), "n_tokens >= 1"), (np.zeros((3, 41)), "expected (n_tokens >= 1, 40)"),
                     (np.full((3, 40), np.nan), "NaN or Inf")]:
        with pytest.raises(PrvrError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            r.embed(bad)
    _, qs = queries(r, root, 1)
    for k in (0, 1001):
        with pytest.raises(PrvrError, match=f"k={k}"):
            r.search_repr(qs[0], k)
    with pytest.raises(PrvrError, match="unknown video id 'nope'"):
        r.video("nope")
    tokens = r.query_features(root, queries(r, root, 1)[0][0])
    q = r.embed(tokens)
    with torch.no_grad():
        t = torch.from_numpy(tokens[None] / (np.linalg.norm(tokens, axis=-1, keepdims=True) + 1e-5)).float()
        want = model.encode_queries(Batch(text=t, text_mask=torch.ones(t.shape[:2]))).normalize()
    torch.testing.assert_close(q.vectors, want.vectors, atol=1e-6, rtol=0)


def test_store_refuses_what_it_cannot_trust(small, tmp_path):
    _, _, _, index = small
    bad = tmp_path / "bad"
    shutil.copytree(index, bad)
    mf = bad / "manifest.json"
    good = json.loads(mf.read_text())

    def refused(manifest_text, what):
        mf.write_text(manifest_text)
        with pytest.raises(store.IndexError_, match=what):
            store.read_manifest(bad)

    refused("{nope", "corrupt manifest")
    refused("[1, 2]", "expected an object, got list")
    refused(json.dumps({**good, "format": "prvr-index-1"}), "format 'prvr-index-1', expected 'prvr-index-2'")
    for shards in (["../shard-00000"], [".hidden"], ["a\\b"], [""], "shard-00000", [3]):
        refused(json.dumps({**good, "shards": shards}), "shards must be plain directory names")
    refused(json.dumps({**good, "token_sets": {}}), "no token sets")
    mf.write_text(json.dumps(good))
    assert store.read_manifest(bad) == good
    with pytest.raises(store.IndexError_, match="no manifest.json"):
        store.read_manifest(tmp_path)

    shard = bad / good["shards"][1]
    names = list(good["token_sets"])
    ids = json.loads((shard / "ids.json").read_text())
    meta = json.loads((shard / "meta.json").read_text())
    offsets = np.load(shard / "frame.offsets.npy")
    for file, content, what in [
        ("ids.json", json.dumps([1, 2]), "expected a list of video ids"),
        ("ids.json", "{", "corrupt shard"),
        ("meta.json", json.dumps(meta[:-1]), f"expected {len(ids)} objects"),
        ("frame.offsets.npy", offsets[:-1], "offsets do not match"),
        ("frame.offsets.npy", offsets - 1, "offsets do not match"),
        ("frame.offsets.npy", np.concatenate([offsets[:-1], [offsets[-1] + 1]]), "offsets do not match"),
        ("frame.offsets.npy", offsets[::-1].copy(), "offsets do not match"),
    ]:
        path = shard / file
        before = path.read_bytes()
        if isinstance(content, str):
            path.write_text(content)
        else:
            np.save(path, content)
        with pytest.raises(store.IndexError_, match=what):
            store.load_shard(shard, names)
        path.write_bytes(before)
    loaded = store.load_shard(shard, names)
    assert loaded.ids == ids and np.array_equal(loaded.sets["frame"].counts, np.diff(offsets))


def test_append_shard_writes_then_lists_it(small, tmp_path):
    """A shard is complete before the manifest lists it; a leftover temporary or orphan shard is replaced."""
    _, _, _, index = small
    manifest = store.read_manifest(index)
    out = tmp_path / "idx"
    m = store.create_index(out, index / "model.safetensors", manifest["config"], store.layouts_of(manifest),
                           manifest["score_weights"], True, None)
    assert m["shards"] == [] and m["n_videos"] == 0 and store.read_manifest(out) == m
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".shard-00000.{dead.pid}.0123abcd.tmp"  # the temporary of a writer that no longer runs
    stale.mkdir()
    (out / "shard-00000").mkdir()  # an orphan of a killed run
    (out / "shard-00000" / "junk").write_text("x")
    sets = {"clip": [np.ones((32, 32), np.float32)] * 2, "frame": [np.ones((3, 32)), np.ones((5, 32))]}
    m = store.append_shard(out, m, ["a", "b"], sets, [{"duration": 1.0}, {"duration": 2.0}])
    assert m["shards"] == ["shard-00000"] and m["n_videos"] == 2 and store.read_manifest(out) == m
    assert not stale.exists() and not (out / "shard-00000" / "junk").exists()
    s = store.load_shard(out / "shard-00000", ["clip", "frame"])
    assert s.sets["frame"].offsets.tolist() == [0, 3, 8] and s.sets["frame"].tokens.dtype == np.float16
    assert s.sets["clip"].tokens.shape == (64, 32) and s.meta[1] == {"duration": 2.0}
    m = store.append_shard(out, m, ["c"], {"clip": [np.ones((32, 32))], "frame": [np.ones((1, 32))]}, [{}])
    assert m["shards"] == ["shard-00000", "shard-00001"] and m["n_videos"] == 3
    assert Retriever(out).ids == ["a", "b", "c"]


def test_search_query_id_reads_the_captions_features(small):
    """A caption id of the data set in the release layout: its precomputed features, searched as tokens; features
    made with another text encoder than the index's are refused, naming the data set's text folder."""
    root, layout, _, index = small
    r = Retriever(index)
    qid = queries(r, root, 3)[0][2]
    features = r.query_features(root, qid)
    assert np.array_equal(features, np.asarray(layout_features(layout, qid)))
    hits = r.search_query_id(root, qid)
    assert [h.to_dict() for h in hits] == [h.to_dict() for h in r.search_tokens(features, 10)] and len(hits) == 10
    assert [h.video_id for h in r.search_query_id(root, qid, 3, exact=True)] == [h.video_id for h in hits[:3]]
    r.manifest["text_encoder"] = {"kind": "hf", "id": "org/index-enc"}
    record = layout.text_encoder_file
    record.write_text(json.dumps({"kind": "hf", "id": "org/data-enc"}))
    try:
        from prvr.errors import PrvrError

        with pytest.raises(PrvrError, match="^index: the text encoder of TextData hf:org/data-enc differs from the "
                                            "index's hf:org/index-enc; queries must be encoded with the encoder the "
                                            "index was built with$"):
            r.search_query_id(root, qid)
        record.write_text(json.dumps({"kind": "hf", "id": "org/index-enc"}))
        assert [h.video_id for h in r.search_query_id(root, qid)] == [h.video_id for h in hits]
    finally:
        record.unlink()


def layout_features(layout, qid):
    from prvr.data.features import open_query_features

    return open_query_features(layout).get(qid)
