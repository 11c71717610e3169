"""Shared helpers of the bench scripts: random inputs of a preset's real shapes, peak RSS, result files."""

from __future__ import annotations

import json
import platform
import resource
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


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


def write_result(name: str, result: dict, as_json: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine(), "argv": sys.argv[1:]}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        if k not in ("machine", "argv"):
            print(f"{k}: {v}")
    if as_json:
        print(json.dumps(result))
