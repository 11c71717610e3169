import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from prvr.data.datasets import SplitIndex
from prvr.data.layout import DatasetLayout
from prvr.eval.evaluator import evaluate
from prvr.index import store
from prvr.index.build import build_index
from prvr.index.search import Retriever
from prvr.models.checkpoint import load_checkpoint, save_checkpoint
from prvr.synth.synthetic import FRAME_STEP, synthetic_info, write_synthetic
from prvr.train.loop import train
from tests.conftest import tiny_run_config


def cli(*args):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("idxdata")
    write_synthetic(root, "tiny", scale=3.0)
    cfg = tiny_run_config(root)
    cfg.train.epochs = 5
    run = tmp_path_factory.mktemp("idxrun")
    train(cfg, run, progress=False, log=lambda *_: None)
    ckpt = run / "best.safetensors"
    index = tmp_path_factory.mktemp("idx") / "index"
    build_index(ckpt, DatasetLayout(root, "charades"), "test", index, shard_size=20, progress=False)
    return root, ckpt, index


def test_ranking_equals_eval(trained):
    root, ckpt, index = trained
    layout = DatasetLayout(root, "charades")
    model, _, _ = load_checkpoint(ckpt)
    ev = evaluate(model, layout, "test", keep_scores=True)
    r = Retriever(index)
    assert r.ids == ev.video_ids and len(r.manifest["shards"]) > 1
    for qi in range(0, len(ev.query_ids), 7):
        hits = r.search_query_id(root, ev.query_ids[qi], k=len(r))
        got = np.array([h.score for h in sorted(hits, key=lambda h: ev.video_ids.index(h.video_id))])
        np.testing.assert_allclose(got, ev.scores[qi], atol=1e-3, rtol=0)  # float16 tokens: measured 1.5e-4
        order = np.argsort(-ev.scores[qi])
        gaps = -np.diff(ev.scores[qi][order])
        safe = np.concatenate([[True], gaps > 1e-2])  # positions not within float16 noise of their neighbour
        top = [ev.video_ids[i] for i in order]
        for pos, h in enumerate(hits):
            if safe[pos] and (pos + 1 == len(hits) or safe[pos + 1]):
                assert h.video_id == top[pos]


def test_moments_find_the_planted_events(trained):
    """Moments are in seconds: synthetic frames are 0.5 s apart (FRAME_STEP), so frames and seconds differ."""
    root, _, index = trained
    layout = DatasetLayout(root, "charades")
    info = synthetic_info(layout)
    step = info["preset"]["frame_step"]
    assert step == FRAME_STEP != 1.0
    events = {e["cap_id"]: (vid, e["seconds"], m["n_frames"]) for vid, m in info["moments"].items()
              for e in m["events"]}
    r = Retriever(index)
    hit_count = overlap = 0
    for cap_id, (vid, (s, e), n) in events.items():
        if vid not in r.ids:
            continue
        top = r.search_query_id(root, cap_id, k=1)[0]
        if top.video_id != vid:
            continue
        hit_count += 1
        lo, hi = top.frames
        assert 0 <= lo < hi <= n
        assert (top.start, top.end) == pytest.approx((lo * step, hi * step))  # frame rows -> seconds
        assert 0 <= top.start < top.end <= n * step
        f = round(top.frame_time / step - 0.5)  # the best frame's time stamp is one of the video's frame times
        assert 0 <= f < n and top.frame_time == pytest.approx((f + 0.5) * step)
        overlap += top.start < e and top.end > s  # planted event, in seconds
    assert hit_count >= 5
    assert overlap / hit_count > 0.6, (overlap, hit_count)


def test_killed_build_keeps_previous_index_and_resumes(trained, tmp_path, monkeypatch):
    root, ckpt, _ = trained
    layout = DatasetLayout(root, "charades")
    out = tmp_path / "index"
    real = store.append_shard
    calls = []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr("prvr.index.build.append_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        build_index(ckpt, layout, "test", out, shard_size=20, progress=False)
    first = json.loads((out / "manifest.json").read_text())
    assert first["n_videos"] == 20 and len(Retriever(out)) == 20
    monkeypatch.setattr("prvr.index.build.append_shard", real)
    m = build_index(ckpt, layout, "test", out, shard_size=20, progress=False)
    r = Retriever(out)
    n_test = len(SplitIndex.from_layout(layout, "test").video_ids)
    assert m["n_videos"] == len(r) == len(set(r.ids)) == n_test
    # add another split: ids stay unique
    r2 = cli("index", "add", "--checkpoint", ckpt, "--data", root, "--out", out, "--split", "val", "--quiet")
    assert r2.returncode == 0, r2.stderr
    r = Retriever(out)
    assert len(r) == len(set(r.ids)) > m["n_videos"]
    # a checkpoint of the same architecture with other weights would mix two models' tokens: refused
    model, cfg, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, model, cfg)
    before = (out / "manifest.json").read_text()
    r3 = cli("index", "add", "--checkpoint", other, "--data", root, "--out", out, "--split", "train", "--quiet")
    assert r3.returncode == 2 and "other weights" in r3.stderr and "Traceback" not in r3.stderr, r3.stderr
    assert (out / "manifest.json").read_text() == before
    # the same weights in another file (a re-saved copy with training state) are the same model
    model, cfg, _ = load_checkpoint(ckpt)
    save_checkpoint(tmp_path / "copy.safetensors", model, cfg, train_state={"epoch": 99})
    r4 = cli("index", "add", "--checkpoint", tmp_path / "copy.safetensors", "--data", root, "--out", out,
             "--split", "val", "--quiet")
    assert r4.returncode == 0, r4.stderr


def test_cli_search_and_bad_input(trained, tmp_path):
    root, _, index = trained
    qid = DatasetLayout(root, "charades").caption_file("test").read_text().split()[0]
    ok = cli("search", index, "--query-id", qid, "--data", root, "-k", "3", "--json")
    assert ok.returncode == 0, ok.stderr
    hits = json.loads(ok.stdout)
    assert len(hits) == 3 and {"video_id", "score", "start", "end", "frame_time"} <= set(hits[0])
    bad_manifest = tmp_path / "bad"
    bad_manifest.mkdir()
    (bad_manifest / "manifest.json").write_text("{nope")
    for args, expect in [
        (["search", tmp_path / "missing", "--query-id", qid, "--data", root], "not a prvr index"),
        (["search", bad_manifest, "--query-id", qid, "--data", root], "corrupt manifest"),
        (["search", index, "--query-id", qid, "--data", root, "-k", "0"], "1 <= x <= 1000"),
        (["search", index, "--query-id", "nosuch#enc#0", "--data", root], "nosuch#enc#0"),
        (["index", "add", "--checkpoint", "/x.safetensors", "--data", root, "--out", tmp_path / "none"], "no index"),
    ]:
        r = cli(*args)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_index_without_text_encoder(trained):
    """Synthetic data records no text encoder: free text is refused in one line (CLI exit 2, API 400) while search
    by query id and the rest of the API work; its videos have no files."""
    from fastapi.testclient import TestClient

    from prvr.serve.app import create_app

    root, _, index = trained
    assert Retriever(index).manifest["text_encoder"] is None
    r = cli("search", index, "someone opening a door")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "records no text encoder" in r.stderr and "--query-id" in r.stderr
    c = TestClient(create_app(index), base_url="http://127.0.0.1")
    assert c.get("/health").json()["text_search"] is False
    bad = c.get("/search", params={"q": "someone opening a door"})
    assert bad.status_code == 400 and "records no text encoder" in bad.json()["detail"]
    vid = Retriever(index).ids[0]
    v = c.get(f"/videos/{vid}").json()
    assert v["video_id"] == vid and v["duration"] > 0 and v["has_file"] is False
    assert c.get(f"/videos/{vid}/file").status_code == 404
    qid = DatasetLayout(root, "charades").caption_file("test").read_text().split()[0]
    ok = cli("search", index, "--query-id", qid, "--data", root, "-k", "2", "--json")
    assert ok.returncode == 0 and len(json.loads(ok.stdout)) == 2, ok.stderr


def test_two_stage_search_matches_exact(trained, tmp_path):
    import shutil

    from prvr.index.ann import build_ann

    root, ckpt, index = trained
    ann_index = tmp_path / "ann-index"
    shutil.copytree(index, ann_index)
    r = cli("index", "ann", ann_index, "--nlist", "8")
    assert r.returncode == 0, r.stderr
    rt = Retriever(ann_index)
    assert rt.ann is not None
    qids = DatasetLayout(root, "charades").caption_file("test").read_text().split()[::9]
    qids = [q for q in qids if "#enc#" in q][:10]
    overlap = []
    for qid in qids:
        tokens = rt.query_features(root, qid)
        exact = [h.video_id for h in rt.search_tokens(tokens, 10, exact=True)]
        approx = rt.search_tokens(tokens, 10, exact=False)
        overlap.append(len(set(exact) & {h.video_id for h in approx}) / 10)
        # stage 2 is exact: a candidate's score equals its exact score
        exact_scores = {h.video_id: h.score for h in rt.search_tokens(tokens, len(rt), exact=True)}
        for h in approx:
            assert h.score == pytest.approx(exact_scores[h.video_id], abs=1e-5)
    assert np.mean(overlap) >= 0.9
    assert rt.ann.codes == "sq4" and rt.ann.lists is not None  # the defaults: sq4 codes, stage 2 from the lists
    # the CLI's search: stage 2 from the lists, then (--no-lists) from the shards; the same hits and scores
    with_lists = json.loads(cli("search", ann_index, "--query-id", qids[0], "--data", root, "-k", "5", "--json").stdout)
    r = cli("index", "ann", ann_index, "--nlist", "8", "--codes", "sq8", "--no-lists")
    assert r.returncode == 0, r.stderr
    assert not (ann_index / "ann.lists.faiss").exists() and Retriever(ann_index).ann.lists is None
    assert json.loads((ann_index / "ann.json").read_text())["lists"] is None
    exact = json.loads(cli("search", ann_index, "--query-id", qids[0], "--data", root, "-k", "5", "--json",
                           "--exact").stdout)
    assert [h["video_id"] for h in with_lists] == [h["video_id"] for h in exact]
    assert [h["score"] for h in with_lists] == pytest.approx([h["score"] for h in exact], abs=5e-7)
    # after `index add` the ANN no longer covers the index: searches fall back to exact
    r = cli("index", "add", "--checkpoint", ckpt, "--data", root, "--out", ann_index, "--split", "val", "--quiet")
    assert r.returncode == 0, r.stderr
    assert Retriever(ann_index).ann is None
    build_ann(ann_index, nlist=8)
    assert Retriever(ann_index).ann is not None
