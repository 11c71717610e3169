"""What the server sends and to whom: media roots, crafted file entries, Host header, security headers, offline
docs, documented errors, no leaked paths, token auth, micro-batching with bounded waiting."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from prvr.index.search import Retriever
from prvr.index.store import IndexError_
from prvr.serve.app import ServeSettings, create_app, public_message
from prvr.serve.batcher import Busy, QueryBatcher
from prvr.serve.media import MediaRoots

TOKEN = "s3cret-token-for-tests-0123456789"


def client(index, **kw) -> TestClient:
    return TestClient(create_app(index, settings=ServeSettings(**kw)), base_url="http://127.0.0.1")


@pytest.fixture()
def crafted(own_index, video_dir, tmp_path):
    """A copy of the served index whose file entries a test can rewrite, and files around the media root."""
    idx = tmp_path / "index"
    shutil.copytree(own_index, idx)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(video_dir / "red_ball.mp4", outside / "elsewhere.mp4")

    def set_file(video_id: str, value):
        meta_path = idx / "shard-00000" / "meta.json"
        ids = json.loads((idx / "shard-00000" / "ids.json").read_text())
        meta = json.loads(meta_path.read_text())
        meta[ids.index(video_id)]["file"] = value
        meta_path.write_text(json.dumps(meta))

    return idx, set_file, outside


def test_legit_file_is_sent_from_the_recorded_root(own_index, video_dir):
    manifest = json.loads((own_index / "manifest.json").read_text())
    assert manifest["media_roots"] == [str(video_dir.resolve())]  # recorded by extract, carried by index build
    c = client(own_index)
    r = c.get("/videos/red_ball/file", headers={"Range": "bytes=0-15"})
    assert r.status_code == 206 and r.headers["content-type"] == "video/mp4" and r.content[4:8] == b"ftyp"


def test_crafted_file_entries_are_404(crafted, video_dir, monkeypatch):
    idx, set_file, outside = crafted
    (video_dir / "notes.txt").exists()
    evil_link = video_dir / "evil_link.mp4"
    out_link = video_dir / "out_link.mp4"
    fake = video_dir / "fake.mp4"
    subdir = video_dir / "dir.mp4"
    try:
        evil_link.symlink_to("/etc/passwd")
        out_link.symlink_to(outside / "elsewhere.mp4")
        fake.write_text("not a video, only named like one")
        subdir.mkdir()
        cases = ["/etc/passwd", "red_ball.mp4", str(video_dir / ".." / video_dir.name / "notes.txt"),
                 str(evil_link), str(out_link), str(fake), str(subdir), str(outside / "elsewhere.mp4"),
                 "/proc/self/environ", str(video_dir)]
        monkeypatch.chdir(video_dir)  # a relative entry never resolves against the working directory
        for value in cases:
            set_file("red_ball", value)
            c = client(idx)
            r = c.get("/videos/red_ball/file")
            assert r.status_code == 404, value
            assert c.get("/videos/red_ball").json()["has_file"] is False
            assert str(video_dir) not in r.text and "passwd" not in r.text
        set_file("red_ball", str(video_dir / "red_ball.mp4"))
        assert client(idx).get("/videos/red_ball/file").status_code == 200
        for value in (str(video_dir / "red_ball.mp4") + "\x00.mp4", 42, ["x"], ""):  # not even a path: refused at load
            set_file("red_ball", value)
            with pytest.raises(IndexError_, match="meta.json: video 'red_ball': file"):
                Retriever(idx)
    finally:
        for p in (evil_link, out_link, fake):
            p.unlink(missing_ok=True)
        if subdir.exists():
            subdir.rmdir()


def test_media_roots_come_from_the_cli_or_the_index(crafted, video_dir, tmp_path):
    idx, _, outside = crafted
    m = json.loads((idx / "manifest.json").read_text())
    m["media_roots"] = []
    (idx / "manifest.json").write_text(json.dumps(m))
    assert client(idx).get("/videos/red_ball/file").status_code == 404  # no root: nothing is sent
    assert client(idx, media_roots=[video_dir]).get("/videos/red_ball/file").status_code == 200
    assert client(idx, media_roots=[outside]).get("/videos/red_ball/file").status_code == 404


def test_media_roots_unit(video_dir, tmp_path):
    roots = MediaRoots([video_dir, tmp_path / "missing"])
    assert roots.roots == [video_dir.resolve()] and roots.missing == [str(tmp_path / "missing")]
    assert roots.resolve(str(video_dir / "kitchen.avi")) == (video_dir / "kitchen.avi").resolve()  # RIFF....AVI
    assert roots.resolve(str(video_dir / "broken.mp4")) is None  # no container signature
    assert roots.resolve(str(video_dir / "empty.mp4")) is None


@pytest.mark.parametrize("host,ok", [("127.0.0.1:8000", True), ("localhost", True), ("[::1]:8000", True),
                                     ("evil.example", False), ("127.0.0.1.evil.example", False), ("", False)])
def test_host_header_is_checked(own_index, host, ok):
    c = client(own_index)
    r = c.get("/health", headers={"host": host})
    assert r.status_code == (200 if ok else 400)
    if not ok:
        assert "Host" in r.json()["detail"]


def test_allowed_hosts_are_configurable(own_index):
    assert client(own_index, allowed_hosts=["media.box"]).get("/health", headers={"host": "media.box"}).status_code == 200
    assert client(own_index, host="0.0.0.0").get("/health", headers={"host": "anything"}).status_code == 200
    c = client(own_index, host="0.0.0.0", allowed_hosts=["media.box"])
    assert c.get("/health", headers={"host": "anything"}).status_code == 400


def test_security_headers_everywhere(own_index):
    c = client(own_index)
    for path in ("/", "/health", "/search?q=a", "/videos/nosuch", "/nosuch", "/docs"):
        h = c.get(path).headers
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY", path
        assert h["referrer-policy"] == "no-referrer" and "frame-ancestors 'none'" in h["content-security-policy"]
    page = c.get("/")
    csp = page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "http" not in csp  # inline blocks allowed by their hashes only
    script = re.search(r"<script>(.*?)</script>", page.text, re.S).group(1)
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp


def test_docs_work_offline(own_index):
    c = client(own_index)
    page = c.get("/docs")
    assert page.status_code == 200
    assert not re.findall(r"(?:src|href)=['\"]https?://", page.text)  # nothing from a CDN
    for asset in re.findall(r"(?:src|href)=['\"](/docs/[^'\"]+)", page.text):
        r = c.get(asset)
        assert r.status_code == 200 and len(r.content) > 1000, asset
    assert c.get("/docs/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/docs/../manifest.json").status_code == 404


def test_openapi_documents_errors(own_index):
    paths = client(own_index).get("/openapi.json").json()["paths"]
    assert {"400", "503"} <= set(paths["/search"]["get"]["responses"])
    assert "404" in paths["/videos/{video_id}"]["get"]["responses"]
    assert {"200", "404"} <= set(paths["/videos/{video_id}/file"]["get"]["responses"])


def test_errors_never_leak_paths(own_index, monkeypatch):
    app = create_app(own_index)
    c = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    secret = str(own_index.resolve())

    def boom(texts, k):
        raise RuntimeError(f"{secret}/shard-00000 exploded")

    monkeypatch.setattr(app.state.prvr.batcher, "search_many", boom)
    r = c.get("/search", params={"q": "a ball"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    for path in ("/videos/nosuch", "/videos/nosuch/file", "/nosuch"):
        r = c.get(path)
        assert r.status_code == 404 and secret not in r.text and "/tmp" not in r.text
    assert public_message(f"{secret}/manifest.json: corrupt manifest") == "manifest.json: corrupt manifest"
    assert public_message("query of 3 characters") == "query of 3 characters"


def test_token_auth(own_index):
    c = client(own_index, token=TOKEN)
    assert c.get("/health").status_code == 200  # liveness stays open
    r = c.get("/search", params={"q": "a red ball"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/search", params={"q": "a red ball"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/search", params={"q": "a red ball"},
                 headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.get("/videos/red_ball/file", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    first = c.get(f"/?token={TOKEN}", follow_redirects=False)  # a browser's first visit
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "httponly" in first.headers["set-cookie"].lower() and "samesite=strict" in first.headers["set-cookie"].lower()
    assert c.get("/search", params={"q": "a red ball"}).status_code == 200  # the cookie carries it now


def test_serve_cli_warns_and_uses_media_root(crafted, video_dir):
    idx, _, _ = crafted
    m = json.loads((idx / "manifest.json").read_text())
    m["media_roots"] = []
    (idx / "manifest.json").write_text(json.dumps(m))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PRVR_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "prvr.cli", "serve", str(idx), "--host", "0.0.0.0", "--port",
                             str(port), "--media-root", str(video_dir)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        import httpx

        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/videos/red_ball/file").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/videos/blue_door").json()["has_file"] is True
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "warning: serving on 0.0.0.0 beyond loopback without --token" in err


# ------------------------------------------------------------------------------------------------ load
def test_search_many_equals_search(own_index):
    r = Retriever(own_index)
    texts = ["someone cooking at the stove", "a red ball", "the blue door opens", "a dog runs"]
    many = r.search_many(texts, 3)
    for text, hits in zip(texts, many, strict=True):
        one = r.search(text, 3)
        assert [h.video_id for h in hits] == [h.video_id for h in one]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in one], atol=2e-6)
        assert [(h.start, h.end, h.frame_time, h.tokens) for h in hits] == [(h.start, h.end, h.frame_time, h.tokens)
                                                                            for h in one]
    assert r.text_encoder_loads == 1


def test_batcher_takes_every_waiting_query():
    gate, calls = threading.Event(), []

    def search_many(texts, k):
        gate.wait(10)
        calls.append(list(texts))
        return [[f"{t}:{i}" for i in range(k)] for t in texts]

    b = QueryBatcher(search_many, max_batch=8, max_pending=20)
    try:
        first = b.submit("q0", 2)
        time.sleep(0.2)  # the worker holds q0 and waits at the gate
        rest = [b.submit(f"q{i}", 1 + i % 3) for i in range(1, 12)]
        gate.set()
        assert first.result(10) == ["q0:0", "q0:1"]
        assert [f.result(10) for f in rest] == [[f"q{i}:{j}" for j in range(1 + i % 3)] for i in range(1, 12)]
        assert [len(c) for c in calls] == [1, 8, 3]  # all that waited, at most max_batch at a time
    finally:
        b.close()


def test_batcher_bounds_waiting_and_isolates_failures():
    gate = threading.Event()

    def search_many(texts, k):
        gate.wait(10)
        if "bad" in texts:
            raise ValueError("bad query")
        return [[t] for t in texts]

    b = QueryBatcher(search_many, max_batch=8, max_pending=2)
    try:
        held = b.submit("x", 1)
        time.sleep(0.2)
        waiting = [b.submit("bad", 1), b.submit("good", 1)]
        with pytest.raises(Busy, match="at most 2"):
            b.submit("one too many", 1)
        gate.set()
        assert held.result(10) == ["x"] and waiting[1].result(10) == ["good"]
        with pytest.raises(ValueError):
            waiting[0].result(10)
    finally:
        b.close()


def test_concurrent_http_searches_are_batched(own_index):
    app = create_app(own_index)
    c = TestClient(app, base_url="http://127.0.0.1")
    texts = [f"{w} ball" for w in ("red", "blue", "a", "the", "someone", "kitchen", "door", "dog")] * 3
    expected = {t: [h["video_id"] for h in c.get("/search", params={"q": t, "k": 3}).json()["hits"]] for t in texts}
    results: dict[int, list] = {}

    def ask(i):
        results[i] = [h["video_id"] for h in c.get("/search", params={"q": texts[i], "k": 3}).json()["hits"]]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == expected[texts[i]] for i in range(len(texts)))
    state = app.state.prvr
    assert state.retriever.text_encoder_loads == 1
    assert state.batcher.queries == 2 * len(texts)


def test_busy_server_answers_503(own_index):
    app = create_app(own_index, settings=ServeSettings(max_pending=1))
    c = TestClient(app, base_url="http://127.0.0.1")
    gate = threading.Event()
    real = app.state.prvr.batcher.search_many
    app.state.prvr.batcher.search_many = lambda texts, k: (gate.wait(10), real(texts, k))[1]
    out = {}
    t1 = threading.Thread(target=lambda: out.setdefault(1, c.get("/search", params={"q": "a"})))
    t1.start()
    time.sleep(0.3)
    t2 = threading.Thread(target=lambda: out.setdefault(2, c.get("/search", params={"q": "b"})))
    t2.start()
    time.sleep(0.3)
    r3 = c.get("/search", params={"q": "c"})
    gate.set()
    t1.join()
    t2.join()
    assert r3.status_code == 503 and "retry later" in r3.json()["detail"] and r3.headers["retry-after"] == "1"
    assert out[1].status_code == 200 and out[2].status_code == 200


def test_crafted_index_path(own_index, tmp_path):
    """The index's own path never appears in an API answer, whatever the request."""
    c = client(own_index)
    for path in ("/videos/%2e%2e%2fmanifest.json", "/videos/..%2F..%2Fetc%2Fpasswd/file", "/docs/..%2F..%2Fsecret"):
        r = c.get(path)
        assert r.status_code == 404 and str(Path(own_index).resolve()) not in r.text
