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
