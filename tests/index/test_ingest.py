"""`prvr ingest`, `prvr search` and `prvr index remove` on real (small) video files with a tiny image-text model:
no captions, no training; resumable, incremental, thumbnails, encoders recorded and checked."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from prvr.data.preprocess import clip_grid, frame_sequence, l2_normalize
from prvr.encode.encoders import load_frame_encoder, load_text_encoder
from prvr.encode.video import decode
from prvr.index.search import Retriever
from prvr.index.store import THUMBS, read_manifest, thumb_key
from tests.media import write_video


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True, env=env)


def inproc(capsys, *args):
    """`prvr ARGS` in this process (the same entry point as the console script, without a new interpreter's start-up)
    -> (exit code, stdout, stderr)."""
    from types import SimpleNamespace

    from prvr.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_ingest_then_search_with_no_training(ingested, video_dir, tiny_image_text):
    index, rep = ingested
    assert sorted(rep.added) == ["blue_door.mp4", "kitchen.avi", "red_ball.mp4"]
    assert len(rep.failures) == 2 and {"empty.mp4", "broken.mp4"} == {f.split(":")[0].rsplit("/", 1)[1]
                                                                      for f in rep.failures}
    m = read_manifest(index)
    assert m["config"]["model"]["name"] == "maxsim" and m["config"]["model"]["visual_dim"] == 24
    enc = m["encoders"]
    assert enc["fps"] == 2.0 and enc["frame"]["size"] == [32, 32] and len(enc["frame"]["mean"]) == 3
    assert enc["frame"]["precision"] == "fp32" and {"torch", "transformers", "av"} <= set(enc["versions"])
    assert enc["text"]["output"].startswith("projected")
    assert m["text_encoder"] == {"kind": "hf", "path": str(tiny_image_text["clip"].resolve())}

    # the score is the clip-cell + frame max-similarity of the encoders' own vectors (to float16 storage)
    r = cli("search", index, "red ball", "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    fenc = load_frame_encoder(f"hf:{tiny_image_text['clip']}")
    q = l2_normalize(load_text_encoder(f"hf:{tiny_image_text['clip']}").encode(["red ball"])[0].mean(0))
    for h in hits:
        raw = fenc.encode(decode(video_dir / h["video_id"], 2.0, fenc.size).frames)
        want = 0.5 * (clip_grid(raw) @ q).max() + 0.5 * (frame_sequence(raw) @ q).max()
        assert h["score"] == pytest.approx(want, abs=2e-3)
        assert h["moments"] and h["moments"][0]["start"] == pytest.approx(h["start"])
        spans = [(mo["start"], mo["end"]) for mo in h["moments"]]
        assert all(b1 < a2 or b2 < a1 for i, (a1, b1) in enumerate(spans) for a2, b2 in spans[i + 1:])
        assert (index / THUMBS / thumb_key(h["video_id"]) / f"{h['frame']}.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert [h["score"] for h in hits] == sorted([h["score"] for h in hits], reverse=True)
    r = cli("search", index, "red ball", "--path", "blue", "--json")
    assert r.returncode == 0 and [h["video_id"] for h in json.loads(r.stdout)] == ["blue_door.mp4"]


def test_another_encoder_is_refused(ingested, tiny_image_text, video_dir):
    index, _ = ingested
    r = cli("ingest", video_dir, index, "--encoder", f"hf:{tiny_image_text['siglip']}", "--quiet")
    assert r.returncode == 2 and "built with encoder hf:" in r.stderr and "Traceback" not in r.stderr
    r = cli("search", index, "red ball", "--encoder", "minilm")
    assert r.returncode == 2 and "differs from the index's" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_incremental_prune_remove(tmp_path, tiny_image_text, capsys):
    videos, index = tmp_path / "videos", tmp_path / "index"
    (videos / "trip" / "day1").mkdir(parents=True)
    write_video(videos / "a.mp4", 2.0, color=(200, 30, 30))
    write_video(videos / "trip" / "day1" / "b.mp4", 2.0, color=(30, 30, 200))
    enc = f"hf:{tiny_image_text['siglip']}"
    r = inproc(capsys, "ingest", videos, index, "--encoder", enc, "--quiet", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "2 videos; added 2" in r.stdout and "frames/s" in r.stdout and "videos/min" in r.stdout
    write_video(videos / "trip" / "c.mp4", 3.0, color=(30, 200, 30))
    r = inproc(capsys, "ingest", videos, index, "--encoder", enc, "--quiet")
    assert r.returncode == 0 and "3 videos; added 1" in r.stdout and "2 unchanged" in r.stdout, r.stdout + r.stderr
    (videos / "a.mp4").unlink()
    r = inproc(capsys, "ingest", videos, index, "--encoder", enc, "--quiet")
    assert r.returncode == 0 and "3 videos; added 0" in r.stdout and "--prune" in r.stderr and "a.mp4" in r.stderr
    r = inproc(capsys, "ingest", videos, index, "--encoder", enc, "--quiet", "--prune")
    assert r.returncode == 0 and "2 videos" in r.stdout and "1 removed" in r.stdout
    assert sorted(Retriever(index).ids) == ["trip/c.mp4", "trip/day1/b.mp4"]
    assert not (index / THUMBS / thumb_key("a.mp4")).exists()

    r = inproc(capsys, "index", "remove", index, "trip/c.mp4")
    assert r.returncode == 0 and "1 left" in r.stdout
    assert Retriever(index).ids == ["trip/day1/b.mp4"] and not (index / THUMBS / thumb_key("trip/c.mp4")).exists()
    r = inproc(capsys, "index", "remove", index, "nope.mp4")
    assert r.returncode == 2 and "no such video id" in r.stderr
    r = inproc(capsys, "ingest", videos, index, "--encoder", enc, "--quiet")  # removed, file still there: added back
    assert r.returncode == 0 and "2 videos; added 1" in r.stdout
    shards = read_manifest(index)["shards"]
    assert len(shards) == len(set(shards)) and all((index / s).is_dir() for s in shards)


def test_killed_ingest_resumes_without_reencoding(tmp_path, tiny_image_text):
    videos, index = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    n = 10
    for i in range(n):
        write_video(videos / f"v{i}.mp4", 3.0, color=(20 * i, 100, 200 - 15 * i))
    cmd = [sys.executable, "-m", "prvr.cli", "ingest", str(videos), str(index), "--encoder",
           f"hf:{tiny_image_text['clip']}", "--quiet", "--commit-every", "1", "--workers", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        try:
            if read_manifest(index)["shards"]:
                break
        except Exception:  # noqa: BLE001  not written yet
            pass
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = read_manifest(index)["n_videos"]
    assert 1 <= done < n
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"added {n - done} " in r.stdout and f"{done} unchanged" in r.stdout
    ids = Retriever(index).ids
    assert sorted(ids) == sorted(f"v{i}.mp4" for i in range(n))


def test_encoders_by_hub_id_from_the_cache(tmp_path, tiny_image_text):
    """hf:ORG/NAME resolves through the Hugging Face cache offline; a missing one is one clear line."""
    import os

    cache = tmp_path / "hub"
    snap = cache / "models--tiny--clip" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_image_text["clip"], snap)
    (cache / "models--tiny--clip" / "refs").mkdir()
    (cache / "models--tiny--clip" / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    code = ("from prvr.encode.encoders import load_frame_encoder, load_text_encoder; import numpy as np;"
            "f = load_frame_encoder('hf:tiny/clip'); t = load_text_encoder('hf:tiny/clip');"
            "print(f.encode(np.zeros((2, 32, 32, 3), np.uint8)).shape, t.encode(['red ball'])[0].shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "(2, 24) (1, 24)" in r.stdout, r.stderr
    r = cli("ingest", tmp_path, tmp_path / "idx", "--encoder", "hf:tiny/missing", "--quiet", env=env)
    assert r.returncode == 2 and "hf:tiny/missing" in r.stderr and "HF_HUB_OFFLINE=1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "idx").exists()


def test_siglip_towers_share_one_space(tiny_image_text):
    f = load_frame_encoder(f"hf:{tiny_image_text['siglip']}")
    t = load_text_encoder(f"hf:{tiny_image_text['siglip']}")
    assert f.mean == (0.5, 0.5, 0.5) and t.pad_to_max
    v = f.encode(np.full((3, 32, 32, 3), 128, np.uint8))
    q = t.encode(["a red ball", "door"])
    assert v.shape[1] == q[0].shape[1] == 32 and q[0].shape[0] == 1 and np.isfinite(v).all()


def test_extract_records_its_encoders_with_the_features_and_in_the_index(own_index, ingested):
    enc = read_manifest(own_index)["encoders"]  # prvr extract -> encoders.json -> prvr index build
    assert enc["frame"]["spec"]["kind"] == "hf" and enc["fps"] == 2.0 and enc["text"]["output"] == "token features"
    assert "torch" in enc["versions"]
    r = cli("ingest", ingested[0].parent, own_index, "--quiet")  # not an index `prvr ingest` made
    assert r.returncode == 2 and "prvr index build" in r.stderr
