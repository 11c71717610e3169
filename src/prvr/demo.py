"""`make demo`: synthesise charades-small, train DreamPRVR a few epochs, evaluate on test against an untrained
model, print both tables and the wall time."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

from prvr.config import apply_overrides, load_preset
from prvr.data.layout import DatasetLayout
from prvr.data.synth import write_synthetic
from prvr.eval.evaluator import evaluate
from prvr.models import build_model
from prvr.runtime import tune_allocator
from prvr.train.checkpoint import load_checkpoint
from prvr.train.loop import train

# The charades preset, narrowed so a CPU demo trains in a couple of minutes. Everything else is the preset.
DEMO_OVERRIDES = ["model.hidden_size=128", "train.lr=5e-4", "train.epochs=8"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = ap.parse_args(argv)
    tune_allocator()
    console = Console()
    t0 = time.time()
    data_root = args.out / "data"
    layout = DatasetLayout(data_root, "charades")
    if not layout.caption_file("test").exists():
        console.print("[bold]1/3[/] synthesising charades-small (standard layout, Charades dims 1024/1024)")
        write_synthetic(data_root, "charades-small")
    else:
        console.print(f"[bold]1/3[/] using the synthetic data in {layout.base}")
    cfg = apply_overrides(load_preset("charades"), DEMO_OVERRIDES + args.overrides + [f"data.root={data_root}"])
    console.print(f"[bold]2/3[/] training DreamPRVR (charades preset; {', '.join(DEMO_OVERRIDES + args.overrides)})")
    torch.manual_seed(cfg.train.seed)
    untrained = evaluate(build_model(cfg.model).eval(), layout, "test").metrics
    run = args.out / "run"
    train(cfg, run, progress=True, log=console.print)
    console.print("[bold]3/3[/] evaluating the best checkpoint on the test split")
    model, _, state = load_checkpoint(run / "best.safetensors")
    trained = evaluate(model, layout, "test").metrics
    from prvr.cli import metrics_table

    console.print(metrics_table({"untrained": untrained, f"trained (best val epoch {state['epoch']})": trained},
                                "charades-small, test split"))
    console.print(f"wall time {time.time() - t0:.0f} s; checkpoint {run / 'best.safetensors'}")
    console.print(f"evaluate it again with: .venv/bin/prvr eval --checkpoint {run / 'best.safetensors'} "
                  f"--data {data_root} --split test")


if __name__ == "__main__":
    main()
