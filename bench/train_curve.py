"""Training curves of the authors' DreamPRVR and of prvr on the same synthetic data, several seeds each.

    python bench/train_curve.py --original /tmp/orig-dreamprvr/src --ref-python /tmp/refvenv-dreamprvr/bin/python \\
        --work /tmp/curve --seeds 0 1 2 --max-epochs 15 --hidden 128 --jobs 2 --threads 1 --json

Data: `prvr synth ROOT --preset charades-curve` (400 train / 100 val / 100 test videos, Charades feature sizes).
Both sides run the authors' Charades configuration (Configs/cha.py = prvr's `charades` preset: lr 2e-4, warm-up 1 %,
weight decay 0.01, hard negatives from epoch 20, every loss weight) with batch 32 and the authors' 100-epoch
schedule (t_total = 13 steps x 100 epochs), stopped after `--max-epochs` epochs (`train.max_epochs`); `--hidden`
narrows both models alike (the authors' width is 384). Early stopping is off on both sides so every run has every
epoch. The original side is the authors' code and loop, driven by bench/reference/train_curve_original.py in its own
virtual environment (nothing of it is copied here); the prvr side is `prvr train`. Validation on the `val`
captions after every epoch, on both sides with the same protocol.

Prints, per epoch, validation SumR and mean training loss as mean ± sd over the seeds for each side, and whether
the two means agree within the seed spread: |mean_original - mean_prvr| <= sqrt(sd_original^2 + sd_prvr^2) (the
spread of the difference of two single runs). Writes bench/results/train_curve_<what was run>.json and, with
`--plot`, the PNG of `prvr plot` over the same runs. Existing run folders with all their epochs are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))
from common import cpu_model  # noqa: E402

from prvr.train.curves import CurveGroup, plot_curves, read_curve  # noqa: E402

BATCH = 32
SCHEDULE_EPOCHS = 100  # the authors' n_epoch: the LR schedule's length


def prvr_command(data: Path, run: Path, seed: int, args) -> list[str]:
    sets = [f"train.batch_videos={BATCH}", f"train.epochs={SCHEDULE_EPOCHS}", f"train.max_epochs={args.max_epochs}",
            "train.max_es_cnt=1000", "train.num_workers=0", f"model.hidden_size={args.hidden}"]
    cmd = [sys.executable, "-m", "prvr.cli", "train", "--preset", "charades", "--data", str(data), "--out", str(run),
           "--seed", str(seed), "--device", "cpu", "--quiet"]
    for s in sets + args.prvr_set:
        cmd += ["--set", s]
    return cmd


def original_command(data: Path, run: Path, seed: int, args) -> list[str]:
    sets = [f"batchsize={BATCH}", f"n_epoch={SCHEDULE_EPOCHS}", f"hidden_size={args.hidden}"]
    cmd = [str(args.ref_python), str(REPO / "bench" / "reference" / "train_curve_original.py"),
           "--original", str(args.original), "--data", str(data), "--out", str(run), "--seed", str(seed),
           "--max-epochs", str(args.max_epochs), "--threads", str(args.threads)]
    for s in sets + args.original_set:
        cmd += ["--set", s]
    return cmd


def complete(run: Path, epochs: int) -> bool:
    try:
        return len(read_curve(run).epochs) >= epochs
    except Exception:
        return False


def run_one(side: str, seed: int, data: Path, args) -> tuple[str, int, float]:
    run = args.work / f"{side}-s{seed}"
    if complete(run, args.max_epochs):
        return side, seed, 0.0
    cmd = (original_command if side == "original" else prvr_command)(data, run, seed, args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(REPO / "src")}
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run / "stdout.log", "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0:
        raise SystemExit(f"{side} seed {seed} failed (exit {rc}); see {run / 'stdout.log'}")
    return side, seed, time.time() - t0


def git_commit() -> str:
    """HEAD of this checkout (or PRVR_GIT_COMMIT for a copy made with `git archive`, which has no .git)."""
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return out or os.environ.get("PRVR_GIT_COMMIT", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, type=Path, help="src/ folder of lijun2005/CVPR26-DreamPRVR")
    ap.add_argument("--ref-python", required=True, type=Path, help="python of a venv with torch, h5py, easydict, ...")
    ap.add_argument("--work", type=Path, default=Path("/tmp/prvr-train-curve"), help="data and run folders")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--hidden", type=int, default=384, help="hidden size of both models (the authors': 384)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="threads per run")
    ap.add_argument("--prvr-set", action="append", default=[], help="extra --set for prvr train")
    ap.add_argument("--original-set", action="append", default=[], help="extra cfg key=value for the original")
    ap.add_argument("--sides", nargs="+", default=["original", "prvr"], choices=["original", "prvr"])
    ap.add_argument("--plot", type=Path, help="also write the curves as a PNG (prvr plot)")
    ap.add_argument("--name", help="result name (default: from what was run)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.time()
    data = args.work / "data"
    if not (data / "charades" / "TextData" / "charadesval.caption.txt").exists():
        subprocess.run([sys.executable, "-m", "prvr.cli", "synth", str(data), "--preset", "charades-curve"], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    jobs = [(side, seed) for seed in args.seeds for side in args.sides]
    with ThreadPoolExecutor(args.jobs) as pool:
        for side, seed, secs in pool.map(lambda j: run_one(j[0], j[1], data, args), jobs):
            print(f"{side} seed {seed}: {'reused' if secs == 0 else f'{secs / 60:.1f} min'}", flush=True)
    groups = {side: CurveGroup(side, [read_curve(args.work / f"{side}-s{s}") for s in args.seeds]) for side in args.sides}
    n = min(g.epochs for g in groups.values())
    result: dict = {"what": "validation SumR and mean training loss per epoch, mean ± sd over seeds",
                    "data": "prvr synth --preset charades-curve (400 train / 100 val videos)",
                    "setup": {"preset": "charades (Configs/cha.py)", "batch_videos": BATCH,
                              "schedule_epochs": SCHEDULE_EPOCHS, "max_epochs": args.max_epochs,
                              "hidden_size": args.hidden, "seeds": args.seeds, "early_stopping": "off",
                              "prvr_set": args.prvr_set, "original_set": args.original_set},
                    "epochs": n, "sides": {}}
    for side, g in groups.items():
        result["sides"][side] = {m: {"mean": g.mean(m)[:n].round(4).tolist(), "sd": g.spread(m)[:n].round(4).tolist(),
                                     "runs": g.values(m)[:, :n].round(4).tolist()} for m in ("sumr", "loss")}
    print(f"\n{'epoch':>5} | {'original SumR':>15} | {'prvr SumR':>15} | agree | {'original loss':>15} | "
          f"{'prvr loss':>15} | agree")
    agree = {"sumr": [], "loss": []}
    if {"original", "prvr"} <= set(groups):
        o, p = groups["original"], groups["prvr"]
        for e in range(n):
            cells = []
            for m, fmt in (("sumr", "{:6.1f} ± {:5.1f}"), ("loss", "{:6.3f} ± {:5.3f}")):
                mo, so, mp, sp = o.mean(m)[e], o.spread(m)[e], p.mean(m)[e], p.spread(m)[e]
                ok = abs(mo - mp) <= math.hypot(so, sp)
                agree[m].append(bool(ok))
                cells += [fmt.format(mo, so), fmt.format(mp, sp), "yes  " if ok else "NO   "]
            print(f"{e:>5} | {cells[0]:>15} | {cells[1]:>15} | {cells[2]} | {cells[3]:>15} | {cells[4]:>15} | {cells[5]}")
        result["agree_within_spread"] = agree
        result["epochs_agreeing"] = {m: f"{sum(v)}/{len(v)}" for m, v in agree.items()}
        print(f"\nmeans agree within the seed spread: SumR {result['epochs_agreeing']['sumr']} epochs, "
              f"loss {result['epochs_agreeing']['loss']} epochs")
    if args.plot:
        plot_curves(list(groups.values()), args.plot,
                    f"DreamPRVR, charades-curve synthetic data, hidden {args.hidden}, batch {BATCH}, "
                    f"{SCHEDULE_EPOCHS}-epoch schedule, {len(args.seeds)} seeds")
        result["plot"] = str(args.plot)
    result["wall_s"] = round(time.time() - t0, 1)
    result["machine"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads_per_run": args.threads,
                         "runs_at_a_time": args.jobs, "load_avg_before": [round(x, 2) for x in load_before],
                         "load_avg_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()}
    result["git_commit"] = git_commit()
    result["argv"] = sys.argv[1:]
    name = args.name or (f"train_curve_charades-curve_h{args.hidden}_b{BATCH}_e{args.max_epochs}"
                         f"_s{len(args.seeds)}_{'-'.join(args.sides)}_cpu")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS / (name + '.json')}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
