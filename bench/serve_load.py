"""Load on `prvr serve`: 1, 20 and 50 concurrent clients on loopback, each sending free-text searches back to back.

Builds an index of N videos (random unit tokens of the Charades layout: 32 clip cells + 20-120 frames, 384-d,
with the MiniLM text encoder recorded, so queries are real text through the real encoder), starts
`prvr serve` in a subprocess, and for each client count runs for a bounded time and request count. Reports
throughput, p50/p95 latency, the fair-queueing bound (clients x sequential p50) and the server's threads and
RSS (sampled from /proc during the run). The client is one asyncio loop (httpx), so it costs the server little CPU.

    python bench/serve_load.py --videos 2000 --seconds 15 --json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

QUERIES = ["someone cooking at the stove", "a person opens the front door", "a man washing dishes in the sink",
           "a woman reading a book on the sofa", "a child throwing a ball to a dog", "someone folding laundry",
           "a person drinking a glass of water", "a teenager playing video games", "someone sweeping the floor",
           "an old man watering the plants", "a person typing on a laptop", "someone taking a pizza out of the oven",
           "a woman tying her shoelaces", "a boy riding a scooter", "someone pouring coffee into a mug",
           "a person hanging a picture on the wall", "a man lifting weights", "someone closing the curtains"]


def build_index(out: Path, n_videos: int, seed: int = 0) -> None:
    from prvr.index.store import append_shard, create_index
    from prvr.models import build_model
    from prvr.models.checkpoint import save_checkpoint
    from prvr.models.presets import load_preset

    cfg = load_preset("charades")
    cfg.model.visual_dim, cfg.model.text_dim = 512, 384  # MiniLM token features in
    model = build_model(cfg.model)
    ckpt = out.parent / "bench-model.safetensors"
    save_checkpoint(ckpt, model, cfg)
    manifest = create_index(out, ckpt, cfg.to_dict(), model.token_layouts(), model.score_weights(), True,
                            {"kind": "minilm"})
    rng = np.random.default_rng(seed)
    D = cfg.model.hidden_size

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)

    for start in range(0, n_videos, 2048):
        n = min(2048, n_videos - start)
        frames = rng.integers(20, 121, n)
        clip = [unit(rng.standard_normal((32, D), dtype=np.float32)) for _ in range(n)]
        frame = [unit(rng.standard_normal((int(f), D), dtype=np.float32)) for f in frames]
        ids = [f"v{start + i:06d}" for i in range(n)]
        meta = [{"n_raw_frames": int(f), "duration": float(f) / 2} for f in frames]
        manifest = append_shard(out, manifest, ids, {"clip": clip, "frame": frame}, meta)


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Threads", "VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.threads, self.rss = pid, threading.Event(), 0, 0

    def run(self):
        while not self.stop.is_set():
            try:
                s = proc_status(self.pid)
            except OSError:
                return
            self.threads, self.rss = max(self.threads, s["Threads"]), max(self.rss, s["VmRSS"])
            time.sleep(0.05)


async def run_clients(url: str, clients: int, seconds: float, max_requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    sent = 0

    async def client(i: int, http: httpx.AsyncClient):
        nonlocal errors, sent
        j = i
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            q = QUERIES[j % len(QUERIES)]
            j += clients
            t0 = time.perf_counter()
            r = await http.get(f"{url}/search", params={"q": q, "k": 10})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(lat), "errors": errors, "seconds": round(wall, 2),
            "throughput_rps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 20, 50])
    ap.add_argument("--seconds", type=float, default=15.0, help="per client count (after a warm-up)")
    ap.add_argument("--max-requests", type=int, default=5000, help="per client count")
    ap.add_argument("--threads", type=int, default=None, help="prvr serve --threads (default: its own)")
    ap.add_argument("--server-python", default=sys.executable,
                    help="interpreter whose prvr serves (e.g. another checkout's .venv/bin/python, for a before/after)")
    ap.add_argument("--label", default="", help="suffix of the result file name")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="prvr-serve-load-"))
    proc = None
    try:
        t0 = time.time()
        build_index(tmp / "index", args.videos)
        build_s = time.time() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [args.server_python, "-m", "prvr.cli", "serve", str(tmp / "index"), "--port", str(port)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"server did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
        idle = proc_status(proc.pid)
        asyncio.run(run_clients(url, 4, 3.0, 200))  # warm-up: the encoder's and the index's first touches
        levels = []
        for c in args.clients:
            sampler = Sampler(proc.pid)
            sampler.start()
            res = asyncio.run(run_clients(url, c, args.seconds, args.max_requests))
            sampler.stop.set()
            sampler.join()
            res.update(server_threads_peak=sampler.threads, server_rss_peak_mb=round(sampler.rss / 1024))
            levels.append(res)
            print(res, file=sys.stderr)
        seq = next((lv for lv in levels if lv["clients"] == 1), None)
        for lv in levels:
            if seq and lv["clients"] > 1:
                bound = lv["clients"] * seq["p50_ms"]
                lv["fair_p95_bound_ms"] = round(bound, 1)
                lv["p95_over_fair_bound"] = round(lv["p95_ms"] / bound, 3)
                lv["throughput_over_sequential"] = round(lv["throughput_rps"] / seq["throughput_rps"], 2)
        result = {"videos": args.videos, "index_build_s": round(build_s, 1), "idle_threads": idle["Threads"],
                  "idle_rss_mb": round(idle["VmRSS"] / 1024), "levels": levels,
                  "cpu_count": os.cpu_count(), "load_avg_after": os.getloadavg(), "cpu_model": _cpu_model(),
                  "platform": platform.platform()}
        result["server_python"] = args.server_python
        write_result(f"serve_load_{args.videos}" + (f"_{args.label}" if args.label else ""), result, args.json)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
