"""Time the ORIGINAL Holmes (lijun2005/ICML26-Holmes) on inputs prepared by bench/compare_original.py: one training
step (forward, the original loss, backward, its BertAdam) or a full evaluation (the original `validations`: encode
every video and query, score, rank). Runs under the reference venv (tests/golden/README-holmes.md); prints one JSON
line.

    python bench/reference/bench_holmes.py --original /tmp/orig-holmes/src --inputs X.npz --mode train --steps 1

The original code is imported from --original with the runtime patches of bench/reference/holmes.py (stand-ins for
unused imports, Tensor.cuda -> identity); nothing of it is copied. The training step runs the epoch-0 loss
(random negatives, before warm-up end), as prvr's bench/train_step.py does; the model is in train mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: common.py (stdlib + torch)
from common import peak_rss_mb  # noqa: E402
from holmes import base_config, load_original

FULL_VISUAL_DIM = {"cha": 1024, "tvr": 3072, "act": 1024}


def ragged(z, name: str) -> list[torch.Tensor]:
    rows, counts = z[f"{name}_rows"], z[f"{name}_counts"]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [torch.from_numpy(rows[s:s + n]) for s, n in zip(starts, counts, strict=True)]


def train(orig, cfg: dict, z, steps: int) -> dict:
    model = orig.models.get_models(cfg).train()
    criterion = orig.losses.get_losses(cfg)
    criterion.cfg["use_hard_negative"] = criterion.cfg["warmup_end"] = False  # epoch 0, as main.train_one_epoch sets
    optimizer = orig.opts.get_opts(cfg, model, [None] * 10)  # t_total = 10 * n_epoch: past warm-up after step 0
    labels = z["labels"].tolist()
    batch = dict(clip_video_features=torch.from_numpy(z["clip"]), frame_video_features=torch.from_numpy(z["frames"]),
                 videos_mask=torch.from_numpy(z["frame_mask"]), text_feat=torch.from_numpy(z["text"]),
                 text_mask=torch.from_numpy(z["text_mask"]), text_labels=labels)

    def step() -> None:  # main.train_one_epoch's body
        optimizer.zero_grad()
        loss = criterion(model(batch), batch)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # CPU seconds of all threads: robust to a busy machine
    return {"train_step_s": [round(t, 3) for t in times], "train_step_s_median": round(statistics.median(times), 3),
            "train_step_cpu_s": [round(c, 3) for c in cpu], "train_step_cpu_s_median": round(statistics.median(cpu), 3),
            "n_queries": len(labels), "batch_videos": int(z["clip"].shape[0])}


class Loader(list):
    """What the original validation iterates: collated batches, and `.dataset` for its length."""

    def __init__(self, batches, n):
        super().__init__(batches)
        self.dataset = range(n)


def evaluate(orig, cfg: dict, z) -> dict:
    dp = orig.provider
    model = orig.models.get_models(cfg).eval()
    clips, frames, tokens = z["clip"], ragged(z, "frames"), ragged(z, "tokens")
    video_ids = [f"v{i}" for i in range(len(clips))]
    cap_ids = [f"v{v}#enc#{i}" for i, v in enumerate(z["labels"])]
    vb, qb = cfg["eval_context_bsz"], cfg["eval_query_bsz"]
    t0 = time.perf_counter()  # the original's collate runs in its DataLoader workers; not timed on either side
    videos = Loader([dp.collate_frame_val([(torch.from_numpy(clips[i])[None], frames[i], i, video_ids[i])
                                           for i in range(s, min(s + vb, len(clips)))])
                     for s in range(0, len(clips), vb)], len(clips))
    queries = Loader([dp.collate_text_val([(tokens[i], i, cap_ids[i]) for i in range(s, min(s + qb, len(tokens)))])
                      for s in range(0, len(tokens), qb)], len(tokens))
    t_collate = time.perf_counter() - t0
    val = orig.validations.validations(cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        recalls = val(model, videos, queries)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"eval_total_s": round(total, 3), "eval_cpu_s": round(total_cpu, 3), "collate_s_untimed": round(t_collate, 3),
            "SumR_random_model": round(float(recalls[4]), 2), "videos": len(clips), "queries": len(tokens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", type=Path, required=True, help="the original's src/ (or multisrc/) folder")
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--mode", choices=["train", "eval"], required=True)
    ap.add_argument("--config", default="cha", choices=sorted(FULL_VISUAL_DIM))
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    orig = load_original(args.original.resolve())
    cfg = base_config(orig, args.config)
    cfg.update(num_workers=0, pin_memory=False)
    torch.manual_seed(0)
    z = np.load(args.inputs)
    out = train(orig, cfg, z, args.steps) if args.mode == "train" else evaluate(orig, cfg, z)
    out.update(side="original", tree="multisrc" if orig.multi else "src", config=args.config,
               torch=torch.__version__, threads=torch.get_num_threads(), peak_rss_mb=round(peak_rss_mb(), 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
