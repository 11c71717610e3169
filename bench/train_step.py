"""Time one DreamPRVR training step (forward + all losses + backward + optimiser) on random inputs of a preset's
shapes: 128 videos, ~2.3 captions each (~300), 30-128 frames, 5-30 tokens. One warm-up step, then the median.

    python bench/train_step.py --preset charades --batch-videos 128 --steps 3 --json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, precision_name, random_batch, result_name, write_result  # noqa: E402

from prvr.config import parse_set  # noqa: E402
from prvr.device import bf16_autocast, resolve_device  # noqa: E402
from prvr.models import build_loss, build_model  # noqa: E402
from prvr.models.base import TrainStep  # noqa: E402
from prvr.models.presets import resolve  # noqa: E402
from prvr.runtime import allocator_for_training, tune_allocator  # noqa: E402
from prvr.train.optim import BertAdam, param_groups  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="charades")
    ap.add_argument("--model", default="dreamprvr")
    ap.add_argument("--batch-videos", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--profile", action="store_true", help="print the torch profiler's top operators")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's allocator defaults")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args()
    if not args.no_malloc_tuning:
        tune_allocator()

    cfg = resolve(args.model, args.preset, overrides=[parse_set(o) for o in args.overrides])
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg.model, device).train()
    model.set_recompute(cfg.train.recompute_videos)
    allocator_for_training(model.training_keeps_freed_memory)  # as prvr.train.loop does
    opt = BertAdam(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr, warmup=0.01, t_total=1000)
    criterion = build_loss(cfg.loss, cfg.model)
    batch = random_batch(cfg.model, args.batch_videos, captions_per_video=(1, 4)).to(device)

    def step():
        with bf16_autocast(device, args.amp):
            loss, _ = criterion(model.forward_train(batch), batch.labels, TrainStep())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    times, cpu = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        else:
            step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    result = {"model": args.model, "preset": args.preset, "overrides": args.overrides, "malloc_tuning": not args.no_malloc_tuning, "batch_videos": args.batch_videos, "n_queries": int(batch.labels.numel()),
              "device": str(device), "amp": args.amp, "train_step_s": [round(t, 3) for t in times],
              "train_step_s_median": round(statistics.median(times), 3),
              "train_step_cpu_s": [round(c, 3) for c in cpu], "train_step_cpu_s_median": round(statistics.median(cpu), 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    what = "-".join([args.preset] + ([] if args.model == "dreamprvr" else [args.model]) + args.overrides)
    write_result(result_name("train_step", what, f"{args.batch_videos}v", precision_name(args.amp), device.type),
                 result, args.json)


if __name__ == "__main__":
    main()
