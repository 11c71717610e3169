"""Build a synthetic index of N videos (tokens with topic structure, streamed to disk shard by shard), build the
ANN stage, and measure query latency (p50/p95) and recall@100 of two-stage search against exact search.

    python bench/search.py --videos 100000 --json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, write_result  # noqa: E402

from prvr.index.ann import build_ann  # noqa: E402
from prvr.index.search import Retriever  # noqa: E402
from prvr.index.store import append_shard, create_index, read_manifest  # noqa: E402
from prvr.models import build_model  # noqa: E402
from prvr.models.base import QueryRepr  # noqa: E402
from prvr.models.checkpoint import save_checkpoint  # noqa: E402
from prvr.models.presets import load_preset  # noqa: E402
from prvr.runtime import tune_allocator  # noqa: E402


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synth_shard(rng, centroids, n, kc=32, frames=64, noise=1.0):
    """Each video: background tokens plus two events, each on a quarter of the cells/frames, of random topics."""
    T, D = centroids.shape
    clip = rng.standard_normal((n, kc, D), dtype=np.float32)
    fr = rng.standard_normal((n, frames, D), dtype=np.float32)
    topics = rng.integers(T, size=(n, 2))
    for e in range(2):
        c0, f0 = rng.integers(0, kc - kc // 4, n), rng.integers(0, frames - frames // 4, n)
        for off in range(kc // 4):
            clip[np.arange(n), c0 + off] += np.sqrt(D) / noise * centroids[topics[:, e]]
        for off in range(frames // 4):
            fr[np.arange(n), f0 + off] += np.sqrt(D) / noise * centroids[topics[:, e]]
    return unit(clip).astype(np.float16), [f for f in unit(fr).astype(np.float16)], topics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200, help="latency queries")
    ap.add_argument("--recall-queries", type=int, default=30, help="queries also run exactly, for recall@100")
    ap.add_argument("--shard", type=int, default=10_000)
    ap.add_argument("--candidate-tokens", type=int, default=4096)
    ap.add_argument("--candidate-videos", type=int, default=1000)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to build and keep the index (default: a temporary directory); an index of the same size "
                         "already there is reused and only queries are measured")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tune_allocator()
    rng = np.random.default_rng(0)
    cfg = load_preset("charades")
    D = cfg.model.hidden_size
    centroids = unit(rng.standard_normal((max(20, args.videos // 200), D)).astype(np.float32))  # topics shared by ~400 videos
    work = args.dir or Path(tempfile.mkdtemp(prefix="prvr-bench-"))
    index = work / "index"
    reuse = args.dir is not None and (index / "ann.json").exists() and \
        read_manifest(index)["n_videos"] == args.videos
    t_build = t_ann = rss_build = None
    if reuse:  # a kept build of the same size (--dir): measure queries only
        print(f"reusing the index in {index}", file=sys.stderr)
    else:
        if index.exists():
            shutil.rmtree(index)
        t0 = time.perf_counter()
        ckpt = work / "model.safetensors"
        model = build_model(cfg.model)
        save_checkpoint(ckpt, model, cfg)
        manifest = create_index(index, ckpt, cfg.to_dict(), model.token_layouts(), model.score_weights(), True, None)
        for start in range(0, args.videos, args.shard):
            n = min(args.shard, args.videos - start)
            clip, frames, _ = synth_shard(rng, centroids, n)
            meta = [{"n_raw_frames": 64, "duration": 64.0} for _ in range(n)]
            manifest = append_shard(index, manifest, [f"v{start + i:07d}" for i in range(n)],
                                    {"clip": list(clip), "frame": frames}, meta)
        t_build = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        build_ann(index)
        t_ann = round(time.perf_counter() - t0, 1)
        rss_build = round(peak_rss_mb(), 1)

    r = Retriever(index)
    r.ann.ann.nprobe = args.nprobe
    qrng = np.random.default_rng(1)
    queries = unit(centroids[qrng.integers(len(centroids), size=args.queries)]
                   + 0.8 * unit(qrng.standard_normal((args.queries, D))).astype(np.float32))
    qs = [QueryRepr.single(torch.from_numpy(q.astype(np.float32))[None], ("clip", "frame")).normalize() for q in queries]
    r.search_repr(qs[0], 100, exact=False, candidate_tokens=args.candidate_tokens,
                               candidate_videos=args.candidate_videos)  # warm-up
    lat = []
    for q in qs:
        t = time.perf_counter()
        r.search_repr(q, 100, exact=False, candidate_tokens=args.candidate_tokens,
                               candidate_videos=args.candidate_videos)
        lat.append((time.perf_counter() - t) * 1000)
    recall, t_exact = [], []
    for q in qs[:args.recall_queries]:
        t = time.perf_counter()
        exact = {h.video_id for h in r.search_repr(q, 100, exact=True)}
        t_exact.append(time.perf_counter() - t)
        approx = {h.video_id for h in r.search_repr(q, 100, exact=False, candidate_tokens=args.candidate_tokens,
                               candidate_videos=args.candidate_videos)}
        recall.append(len(exact & approx) / 100)
    result = {"videos": args.videos, "queries": args.queries, "candidate_tokens": args.candidate_tokens,
              "candidate_videos": args.candidate_videos,
              "nprobe": args.nprobe, "p50_ms": round(float(np.percentile(lat, 50)), 2),
              "p95_ms": round(float(np.percentile(lat, 95)), 2), "recall_at_100": round(float(np.mean(recall)), 4),
              "exact_search_s_per_query": round(float(np.mean(t_exact)), 3), "index_write_s": t_build,
              "ann_build_s": t_ann, "peak_rss_mb_build": rss_build,
              "peak_rss_mb": round(peak_rss_mb(), 1),
              "index_gb": round(sum(f.stat().st_size for f in index.rglob("*") if f.is_file()) / 1e9, 2)}
    if args.dir is None:
        shutil.rmtree(work)
    write_result(f"search_{args.videos}", result, args.json)


if __name__ == "__main__":
    main()
