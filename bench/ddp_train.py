"""Data-parallel training on one machine: seconds per training step and per epoch with 1 and with N ranks at the
same global batch (torchrun --standalone, gloo on CPU, nccl on CUDA), and what the gather of the loss inputs costs.

Each rank gets its chunk of a global batch of a preset's shapes (random features, `--batch-videos` videos,
1-4 captions each); the steps are the training loop's (`prvr.train.loop.train_step`: DDP forward, gather with
gradient, the global loss on every rank, backward, BertAdam). An epoch is ceil(train videos / batch) such steps
(Charades-STA: 5338 videos, 42 steps of 128). On a CPU the ranks share the cores: 1 rank runs with all the threads,
N ranks with threads/N each, so both use the same cores.

    python bench/ddp_train.py --preset charades --nproc 1 2 --steps 3 --set model.hidden_size=64 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_batch, write_result  # noqa: E402

TRAIN_VIDEOS = {"charades": 5338, "activitynet": 10009, "tvr": 17435}


def worker(args) -> None:
    import torch

    from prvr import dist
    from prvr.config import parse_set
    from prvr.models import build_loss, build_model
    from prvr.models.base import TrainStep
    from prvr.models.presets import resolve
    from prvr.runtime import tune_allocator
    from prvr.train.distributed import gather_outputs, local_part, wrap
    from prvr.train.loop import train_step
    from prvr.train.optim import make_optimizer

    tune_allocator()
    device = torch.device(args.device)
    d = dist.init_from_env(device)
    device = dist.local_device(device)
    cfg = resolve(args.model, args.preset, overrides=[parse_set(o) for o in args.overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, device).train()
    criterion = build_loss(cfg.loss, cfg.model)
    opt = make_optimizer(model, cfg.train, 1000)
    ddp = wrap(model, device) if dist.sharded() else None
    batch = random_batch(cfg.model, args.batch_videos, captions_per_video=(1, 4))
    gen = torch.Generator(device=device).manual_seed(1)
    local, share = local_part(batch, gen, dist.rank(), dist.world())
    local = local.to(device)
    gather_s: list[float] = []
    gathered_mb = [0.0]

    def gather(o, lab):
        t0 = time.perf_counter()
        out, labels = gather_outputs(o, lab, len(local.clip))
        gather_s.append(time.perf_counter() - t0)
        tensors = [getattr(out, f.name) for f in fields(out)]
        gathered_mb[0] = sum(v.numel() * v.element_size() for v in tensors if torch.is_tensor(v)) / 2**20
        return out, labels

    times = []
    for i in range(args.steps + 1):  # one warm-up step
        dist.barrier()
        t0 = time.perf_counter()
        train_step(model, criterion, opt, local, TrainStep(0, False, generator=gen), device, share=share,
                   forward=ddp, gather=gather if ddp is not None else None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        if i:
            times.append(time.perf_counter() - t0)
    if dist.is_main():
        Path(args.worker).write_text(json.dumps({
            "world": dist.world(), "threads": torch.get_num_threads(), "step_s": [round(t, 3) for t in times],
            "gather_forward_s": round(statistics.median(gather_s[1:]), 4) if len(gather_s) > 1 else 0.0,
            "gathered_mb": round(gathered_mb[0], 1), "local_videos": len(local.clip),
            "backend": d.backend if d else None}))
    dist.shutdown(sync=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="charades")
    ap.add_argument("--model", default="dreamprvr")
    ap.add_argument("--batch-videos", type=int, default=128)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by the ranks")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    epoch_steps = math.ceil(TRAIN_VIDEOS.get(args.preset, 5338) / args.batch_videos)
    runs = {}
    for n in args.nproc:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // n))}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", __file__,
                   "--worker", str(out), "--preset", args.preset, "--model", args.model, "--batch-videos",
                   str(args.batch_videos), "--steps", str(args.steps), "--device", args.device,
                   *[x for o in args.overrides for x in ("--set", o)]]
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            r = json.loads(out.read_text())
        step = statistics.median(r["step_s"])
        runs[str(n)] = {**r, "step_s_median": round(step, 3), "epoch_s": round(step * epoch_steps, 1)}
    base = runs[str(args.nproc[0])]["epoch_s"]
    for r in runs.values():
        r["speedup"] = round(base / r["epoch_s"], 2)
    name = f"ddp_train_{args.model}_{args.preset}_b{args.batch_videos}_{args.device}_t{args.threads}" + "".join(
        f"_{o.split('.')[-1].replace('=', '')}" for o in args.overrides)
    write_result(name, {"model": args.model, "preset": args.preset, "overrides": args.overrides,
                        "batch_videos": args.batch_videos, "epoch_steps": epoch_steps, "device": args.device,
                        "threads": args.threads, "runs": runs}, args.json)


if __name__ == "__main__":
    main()
