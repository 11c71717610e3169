"""Shared helpers of the bench scripts: random inputs of a preset's real shapes, peak RSS, result files.

A result file is named by what was run: `<bench>_<what>_<sizes>_<precision>_<device>.json` (e.g.
`train_step_charades_128v_fp32_cpu.json`), so runs of other sizes or precisions never replace it. A rerun of the
same configuration keeps the earlier runs' figures in `previous_runs` (newest first) instead of overwriting them.
Every run records the machine: CPU model, threads, load average before and after, git commit, versions.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
_LOAD_BEFORE = os.getloadavg()  # when the bench script imported this module, before any work


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB: VmHWM (Linux), the high-water mark of this program's own memory.
    Not ru_maxrss there: Linux carries ru_maxrss across exec, so a child of a big process (bench/compare_original.py
    holding the evaluation inputs: 2.1 GB) starts at its parent's RSS at fork time."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """HEAD of the checkout the bench ran from, with '+dirty' when tracked files differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_avg_before": [round(x, 2) for x in _LOAD_BEFORE],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def result_name(bench: str, what: str, sizes: str, precision: str, device: str) -> str:
    """e.g. result_name("evaluate", "charades", "1334v-3720q", "fp32", "cpu") -> evaluate_charades_1334v-3720q_fp32_cpu"""
    return "_".join([bench] + [part.replace("_", "-").replace("/", "-") for part in (what, sizes, precision, device)])


def precision_name(amp: bool) -> str:
    return "bf16" if amp else "fp32"


def random_batch(cfg, n_videos: int, captions_per_video: tuple[int, int] = (1, 4), frames: tuple[int, int] = (30, 128),
                 tokens: tuple[int, int] = (5, 30), seed: int = 0):
    """A collated training batch of random L2-normalised features with the preset's dims."""
    import numpy as np

    from prvr.data.datasets import collate_train
    from prvr.data.preprocess import clip_grid, frame_sequence, query_tokens

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n_videos):
        raw = rng.standard_normal((int(rng.integers(frames[0], frames[1] + 1)), cfg.visual_dim)).astype("float32")
        qs = [query_tokens(rng.standard_normal((int(rng.integers(tokens[0], tokens[1] + 1)), cfg.text_dim)).astype("float32"))
              for _ in range(int(rng.integers(captions_per_video[0], captions_per_video[1] + 1)))]
        items.append((clip_grid(raw), frame_sequence(raw), qs))
    return collate_train(items)


def write_result(name: str, result: dict, as_json: bool) -> Path:
    """Write bench/results/<name>.json (atomically); earlier runs of the same name move to `previous_runs`."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {**result, "machine": machine(), "git_commit": git_commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "argv": sys.argv[1:]}
    previous = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            previous = [{k: v for k, v in old.items() if k != "previous_runs"}] + old.get("previous_runs", [])
        except json.JSONDecodeError:
            pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**result, "previous_runs": previous}, indent=2) + "\n")
    tmp.replace(path)
    for k, v in result.items():
        if k not in ("machine", "argv"):
            print(f"{k}: {v}")
    print(f"machine: {result['machine']}")
    print(f"written: {path}")
    if as_json:
        print(json.dumps(result))
    return path
