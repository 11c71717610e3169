"""The same training step or full evaluation, prvr beside the authors' original code, in one run.

    python bench/compare_original.py --model hlformer --what train --batch-videos 128 \
        --original /tmp/orig-hlformer/src --python /tmp/refvenv-hlformer/bin/python
    python bench/compare_original.py --model hlformer --what eval --videos 1334 --queries 3720 \
        --original /tmp/orig-hlformer/src --python /tmp/refvenv-hlformer/bin/python

The inputs are made once (the very batch of bench/train_step.py, the very videos and queries of bench/evaluate.py)
and handed to both sides; each side runs in its own process (its own peak RSS): the original through
bench/reference/bench_<model>.py under the reference venv (see tests/golden/README-<model>.md for making it),
prvr through bench/train_step.py / bench/evaluate.py. Writes bench/results/compare_<model>_<what>_<preset>.json
with both sides and the ratios prvr / original.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import random_batch, write_result  # noqa: E402
from evaluate import make_inputs  # noqa: E402

from prvr.models.presets import resolve  # noqa: E402

ORIGINAL_CONFIG = {"charades": "cha", "tvr": "tvr", "activitynet": "act"}


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def cpu_total(x) -> float:
    """CPU seconds of the process while timed (all threads): less sensitive to other load than wall time."""
    return min(x) if isinstance(x, list) else x


def run(cmd: list[str]) -> dict:
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return last_json(r.stdout)


def run_both(first: list[str], second: list[str], parallel: bool) -> tuple[dict, dict]:
    """Both sides one after the other, or at the same time (`parallel`: each under the same load of a shared
    machine, and the pair in the time of the slower; each is still its own process with its own peak RSS)."""
    if not parallel:
        return run(first), run(second)
    procs = []
    for cmd in (first, second):
        print("$", " ".join(cmd), "&", flush=True)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for cmd, proc in zip((first, second), procs, strict=True):
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
        out.append(last_json(stdout))
    return out[0], out[1]


def write_train_inputs(path: Path, cfg, n_videos: int) -> None:
    b = random_batch(cfg, n_videos, captions_per_video=(1, 4))  # = bench/train_step.py's batch
    np.savez(path, clip=b.clip.numpy(), frames=b.frames.numpy(), frame_mask=b.frame_mask.numpy(), text=b.text.numpy(),
             text_mask=b.text_mask.numpy(), labels=b.labels.numpy())


def write_eval_inputs(path: Path, cfg, n_videos: int, n_queries: int) -> None:
    videos, queries, labels = make_inputs(cfg, n_videos, n_queries)  # = bench/evaluate.py's inputs
    np.savez(path, clip=np.stack([c for c, _ in videos]), frames_rows=np.concatenate([f for _, f in videos]),
             frames_counts=np.array([len(f) for _, f in videos]), tokens_rows=np.concatenate(queries),
             tokens_counts=np.array([len(q) for q in queries]), labels=labels.numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hlformer")
    ap.add_argument("--what", choices=["train", "eval"], required=True)
    ap.add_argument("--preset", default="charades", choices=sorted(ORIGINAL_CONFIG))
    ap.add_argument("--original", type=Path, required=True, help="the original release's src/ folder")
    ap.add_argument("--python", default=sys.executable, help="python of the reference venv (runs the original)")
    ap.add_argument("--batch-videos", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up step, each side")
    ap.add_argument("--videos", type=int, default=1334)
    ap.add_argument("--queries", type=int, default=3720)
    ap.add_argument("--parallel", action="store_true", help="run both sides at the same time (same load)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = resolve(args.model, args.preset).model
    with tempfile.TemporaryDirectory(prefix="prvr-compare-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        original = [args.python, str(HERE / "reference" / f"bench_{args.model}.py"), "--original", str(args.original),
                    "--inputs", str(inputs), "--config", ORIGINAL_CONFIG[args.preset]]
        ours = [sys.executable, "--model", args.model, "--preset", args.preset, "--json"]
        if args.what == "train":
            write_train_inputs(inputs, cfg, args.batch_videos)
            theirs, mine = run_both([*original, "--mode", "train", "--steps", str(args.steps)],
                                    [ours[0], str(HERE / "train_step.py"), *ours[1:], "--batch-videos",
                                     str(args.batch_videos), "--steps", str(args.steps)], args.parallel)
            key, cpu_key = "train_step_s_median", "train_step_cpu_s"
            size = f"{args.batch_videos}v"
        else:
            write_eval_inputs(inputs, cfg, args.videos, args.queries)
            theirs, mine = run_both([*original, "--mode", "eval"],
                                    [ours[0], str(HERE / "evaluate.py"), *ours[1:], "--videos", str(args.videos),
                                     "--queries", str(args.queries)], args.parallel)
            key, cpu_key = "eval_total_s", "eval_cpu_s"
            size = f"{args.videos}v-{args.queries}q"
    result = {"model": args.model, "what": args.what, "preset": args.preset, "parallel": args.parallel,
              "original": theirs, "prvr": mine,
              "time_ratio": round(mine[key] / theirs[key], 3),
              "cpu_time_ratio": round(cpu_total(mine[cpu_key]) / cpu_total(theirs[cpu_key]), 3),
              "memory_ratio": round(mine["peak_rss_mb"] / theirs["peak_rss_mb"], 3)}
    default = size in ("128v", "1334v-3720q")  # the sizes of bench/results' compare_<model>_<what>_<preset>.json
    write_result(f"compare_{args.model}_{args.what}_{args.preset}" + ("" if default else f"_{size}"), result, args.json)


if __name__ == "__main__":
    main()
