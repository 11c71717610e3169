import pytest
from fastapi.testclient import TestClient

from prvr.serve.app import create_app


@pytest.fixture(scope="module")
def client(own_index):
    return TestClient(create_app(own_index), base_url="http://127.0.0.1")


def test_health_and_docs(client):
    assert client.get("/health").json() == {"status": "ok", "videos": 3, "text_search": True}
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/search", "/videos/{video_id}", "/health"}
    assert client.get("/docs").status_code == 200
    assert "search-form" in client.get("/").text


def test_search_and_video(client):
    r = client.get("/search", params={"q": "someone cooking at the stove", "k": 2})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert len(hits) == 2 and all(h["has_file"] and h["start"] < h["end"] for h in hits)
    v = client.get(f"/videos/{hits[0]['video_id']}").json()
    assert v["duration"] > 0 and v["has_file"] and "file" not in v
    for h in hits:  # moments in seconds: frames were extracted at 2 fps, so frame rows are not seconds
        meta = client.get(f"/videos/{h['video_id']}").json()
        n, duration = meta["n_raw_frames"], meta["duration"]
        assert n > 1.5 * duration  # two frames a second
        lo, hi = h["frames"]
        assert (h["start"], h["end"]) == pytest.approx((lo / n * duration, hi / n * duration))
        assert 0 <= h["start"] < h["end"] <= duration and 0 <= h["frame_time"] <= duration
    f = client.get(f"/videos/{hits[0]['video_id']}/file", headers={"Range": "bytes=0-99"})
    assert f.status_code == 206 and len(f.content) == 100  # seekable: the page cues the video to the moment


@pytest.mark.parametrize("params,code,detail", [
    ({"q": ""}, 400, "empty query"), ({"q": "   "}, 400, "empty query"),
    ({"q": "x" * 1001}, 400, "at most 1000"), ({"q": "a", "k": 0}, 422, None), ({"q": "a", "k": 5000}, 422, None),
    ({"q": "a", "k": "many"}, 422, None), ({}, 422, None),
])
def test_bad_search_input(client, params, code, detail):
    r = client.get("/search", params=params)
    assert r.status_code == code
    if detail:
        assert detail in r.json()["detail"]


def test_unknown_video(client):
    assert client.get("/videos/nosuch").status_code == 404
    assert client.get("/videos/nosuch/file").status_code == 404


def test_serve_refuses_bad_index(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "prvr.cli", "serve", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "not a prvr index" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("header,code", [("bytes=abc", 400), ("items=0-9", 400), ("bytes=", 400),
                                         ("bytes=99999999-", 416), ("bytes=-0", 416)])
def test_bad_range_header(client, header, code):
    """A malformed or unsatisfiable Range is a 4xx, never a 500 or a wrong body."""
    vid = client.get("/search", params={"q": "a red ball", "k": 3}).json()["hits"][0]["video_id"]
    size = len(client.get(f"/videos/{vid}/file").content)
    r = client.get(f"/videos/{vid}/file", headers={"Range": header})
    assert r.status_code == code, (header, r.status_code, r.text)
    if code == 416:
        assert r.headers["content-range"] == f"bytes */{size}"
    ok = client.get(f"/videos/{vid}/file", headers={"Range": f"bytes={size - 10}-"})
    assert ok.status_code == 206 and len(ok.content) == 10


def test_moved_video_file(own_index, tmp_path):
    """A video file moved after indexing: the API says it has no file (404 for the file), search still works."""
    import json
    import shutil

    index = tmp_path / "index"
    shutil.copytree(own_index, index)
    shard = index / json.loads((index / "manifest.json").read_text())["shards"][0]
    meta = json.loads((shard / "meta.json").read_text())
    ids = json.loads((shard / "ids.json").read_text())
    j = ids.index("red_ball")
    from pathlib import Path

    moved = Path(meta[j]["file"]).with_name(f"red_ball-copy-{tmp_path.name}.mp4")  # under the same media root
    shutil.copyfile(meta[j]["file"], moved)
    meta[j]["file"] = str(moved)
    (shard / "meta.json").write_text(json.dumps(meta))
    c = TestClient(create_app(index), base_url="http://127.0.0.1")
    assert c.get("/videos/red_ball").json()["has_file"]
    assert c.get("/videos/red_ball/file").status_code == 200
    moved.unlink()
    assert c.get("/videos/red_ball").json()["has_file"] is False
    r = c.get("/videos/red_ball/file")
    assert r.status_code == 404 and "red_ball" in r.json()["detail"]
    hits = {h["video_id"]: h for h in c.get("/search", params={"q": "a red ball", "k": 3}).json()["hits"]}
    assert set(hits) == {"red_ball", "blue_door", "kitchen"}
    assert hits["red_ball"]["has_file"] is False and hits["blue_door"]["has_file"] is True
