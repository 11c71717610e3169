"""Time a full evaluation (encode all videos and queries, score, metrics) on random inputs of a preset's shapes.

    python bench/evaluate.py --preset charades --videos 1334 --queries 3720 --json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, precision_name, result_name, write_result  # noqa: E402

from prvr.config import parse_set  # noqa: E402
from prvr.data.datasets import Batch, pad_sequences  # noqa: E402
from prvr.data.preprocess import clip_grid, frame_sequence, query_tokens  # noqa: E402
from prvr.device import bf16_autocast, resolve_device  # noqa: E402
from prvr.eval.evaluator import rank_queries, video_batch  # noqa: E402
from prvr.eval.metrics import recalls  # noqa: E402
from prvr.models import build_model  # noqa: E402
from prvr.models.base import QueryRepr, VideoRepr  # noqa: E402
from prvr.models.presets import resolve  # noqa: E402
from prvr.runtime import tune_allocator  # noqa: E402


def make_inputs(cfg, n_videos, n_queries, seed=0):
    """Preprocessed random inputs (the evaluation's data loading is not what is timed)."""
    rng = np.random.default_rng(seed)
    videos = []
    for _ in range(n_videos):
        raw = rng.standard_normal((int(rng.integers(30, 200)), cfg.visual_dim)).astype("float32")
        videos.append((clip_grid(raw), frame_sequence(raw)))
    queries = [query_tokens(rng.standard_normal((int(rng.integers(5, 31)), cfg.text_dim)).astype("float32"))
               for _ in range(n_queries)]
    labels = np.sort(rng.integers(0, n_videos, n_queries))
    return videos, queries, torch.from_numpy(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="charades")
    ap.add_argument("--model", default="dreamprvr")
    ap.add_argument("--videos", type=int, default=1334)
    ap.add_argument("--queries", type=int, default=3720)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tune_allocator()
    cfg = resolve(args.model, args.preset, overrides=[parse_set(o) for o in args.overrides])
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg.model, device).eval()
    videos, queries, labels = make_inputs(cfg.model, args.videos, args.queries)
    vb, qb = cfg.train.eval_context_bsz, cfg.train.eval_query_bsz
    vb = video_batch(model, vb)  # as prvr.eval.evaluator.encode_videos reads them

    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad(), bf16_autocast(device, args.amp):
        def encoded():  # as prvr.eval.evaluator.encode_videos: batch by batch into the whole
            for s in range(0, len(videos), vb):
                chunk = videos[s:s + vb]
                frames, mask = pad_sequences([f for _, f in chunk])
                yield model.encode_videos(Batch(clip=torch.from_numpy(np.stack([c for c, _ in chunk])), frames=frames,
                                                frame_mask=mask).to(device))

        vt = VideoRepr.collect(encoded(), len(videos)).map(lambda t: t.float())
        t_videos = time.perf_counter() - t0
        qs = []
        for s in range(0, len(queries), qb):
            text, tmask = pad_sequences(queries[s:s + qb])
            qs.append(model.encode_queries(Batch(text=text, text_mask=tmask).to(device)))
        q = QueryRepr.cat(qs).map(lambda t: t.float())
        t_queries = time.perf_counter() - t0 - t_videos
        ranks, _ = rank_queries(model, q, vt, labels.to(device))
        metrics = recalls(ranks)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    result = {"model": args.model, "preset": args.preset, "videos": args.videos, "queries": args.queries, "device": str(device),
              "amp": args.amp, "eval_total_s": round(total, 3), "eval_cpu_s": round(cpu, 3), "encode_videos_s": round(t_videos, 3),
              "encode_queries_s": round(t_queries, 3), "score_and_rank_s": round(total - t_videos - t_queries, 3),
              "SumR_random_model": round(metrics["SumR"], 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
    what = "-".join([args.preset] + ([] if args.model == "dreamprvr" else [args.model]) + args.overrides)
    write_result(result_name("evaluate", what, f"{args.videos}v-{args.queries}q", precision_name(args.amp), device.type),
                 result, args.json)


if __name__ == "__main__":
    main()
