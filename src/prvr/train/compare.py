"""`prvr compare`: train several registered models on one dataset, each with its preset, through the training API
(`prvr.train.loop.train`), then measure each one the same way: test-split recalls, parameters, seconds per training
epoch, evaluation seconds and the bytes its index stores per video (an index of the test split is built)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prvr.config import Override
from prvr.data.layout import DatasetLayout
from prvr.errors import PrvrError
from prvr.eval.evaluator import evaluate
from prvr.eval.metrics import KS
from prvr.index.build import build_index
from prvr.models.checkpoint import load_checkpoint
from prvr.models.presets import resolve
from prvr.models.registry import model_names
from prvr.train.loop import train
from prvr.train.rundir import read_metrics

SPLIT = "test"
# params: parameters; s/epoch: seconds of an epoch's training steps; eval s: test-split evaluation; B/video: index bytes
HEADERS = ("model", *(f"R@{k}" for k in KS), "SumR", "params", "s/epoch", "eval s", "B/video")


@dataclass
class Comparison:
    """One model's row of the comparison."""

    model: str
    preset: str
    metrics: dict[str, float]  # R@1/5/10/100 and SumR on the test split (the best validation checkpoint)
    parameters: int
    epochs: int  # epochs trained (early stopping may end a run before --epochs)
    train_epoch_s: float  # mean seconds of an epoch's training steps (validation and saving not included)
    eval_s: float  # evaluation of the test split: encode every video and query, score, rank
    index_bytes_per_video: float  # token bytes of the test-split index (float16 tokens + offsets) / videos
    run_dir: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_models(text: str) -> list[str]:
    """"hlformer,dreamprvr,holmes" -> the names, each registered, none twice."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = model_names()
    if not names:
        raise PrvrError("--models: expected a comma-separated list of models, e.g. hlformer,dreamprvr,holmes")
    for n in names:
        if n not in known:
            raise PrvrError(f"--models: unknown model {n!r}; registered: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise PrvrError(f"--models: a model is listed twice in {text!r}")
    return names


def index_token_bytes(index_dir: Path, manifest: dict) -> int:
    """Bytes of every shard's token and offset arrays (what the index stores per video; the manifest, ids, meta
    and the copied checkpoint are left out)."""
    return sum(f.stat().st_size for name in manifest["shards"] for f in (index_dir / name).glob("*.npy"))


def compare_one(name: str, preset: str, root: Path, collection: str, run_dir: Path, device: torch.device,
                overrides: Sequence[Override], overwrite: bool, log: Callable[[str], None]) -> Comparison:
    cfg = resolve(name, preset, overrides=[*overrides, ("data.root", str(root)), ("data.collection", collection)])
    result = train(cfg, run_dir, device, progress=False, overwrite=overwrite, log=lambda m: log(f"[{name}] {m}"))
    records = read_metrics(run_dir / "metrics.jsonl")
    epoch_s = [r["train_seconds"] for r in records if "train_seconds" in r]
    best = run_dir / "best.safetensors"
    model, saved, _ = load_checkpoint(best, device)
    layout = DatasetLayout(root, collection, cfg.data.visual_feature)
    t0 = time.perf_counter()
    res = evaluate(model, layout, SPLIT, saved.train.eval_context_bsz, saved.train.eval_query_bsz, device)
    eval_s = time.perf_counter() - t0
    index_dir = run_dir / "index"
    if (index_dir / "manifest.json").exists():  # an earlier compare's index of this run (its checkpoint is replaced)
        shutil.rmtree(index_dir)
    manifest = build_index(best, layout, SPLIT, index_dir, device, resume=False, progress=False)
    per_video = index_token_bytes(index_dir, manifest) / max(1, manifest["n_videos"])
    return Comparison(name, preset, res.metrics, sum(p.numel() for p in model.parameters()), result.epochs_run,
                      sum(epoch_s) / max(1, len(epoch_s)), eval_s, per_video, str(run_dir))


def compare(models: Sequence[str], root: Path, collection: str, out: Path, preset: str | None = None,
            device: torch.device | str = "cpu", overrides: Sequence[Override] = (), overwrite: bool = False,
            log: Callable[[str], None] = print) -> list[Comparison]:
    """Train and measure each model in `out/<model>`. `preset`: the models' dataset preset (default: the collection's
    name when every model has a preset of that name). Every check runs before the first model trains."""
    root = Path(root).expanduser().absolute()
    layout = DatasetLayout(root, collection)
    splits = layout.splits_present()
    for split in ("train", SPLIT):
        if split not in splits:
            raise PrvrError(f"{layout.caption_file(split)}: caption file not found (compare trains on train and "
                            f"reports the {SPLIT} split)")
    preset = preset or collection
    configs = {name: resolve(name, preset, overrides=overrides) for name in models}  # unknown presets/keys: now
    if not overwrite:
        taken = [str(out / n) for n in configs if (out / n / "metrics.jsonl").exists()]
        if taken:
            raise PrvrError(f"{taken[0]}: holds a run already; pass --overwrite to train it again (or another --out)")
    device = torch.device(device)
    return [compare_one(name, preset, root, collection, out / name, device, overrides, overwrite, log)
            for name in configs]


def comparison_table(rows: Sequence[Comparison], title: str = ""):
    from rich.table import Table

    t = Table(title=title or None)
    t.add_column("model")
    for k in KS:
        t.add_column(f"R@{k}", justify="right")
    for col in HEADERS[5:]:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r.model, *(f"{r.metrics[f'R@{k}']:.1f}" for k in KS), f"{r.metrics['SumR']:.1f}", f"{r.parameters:,}",
                  f"{r.train_epoch_s:.1f}", f"{r.eval_s:.1f}", f"{r.index_bytes_per_video:,.0f}")
    return t


def markdown_table(rows: Sequence[Comparison]) -> str:
    """The same table in Markdown (for a README)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    for r in rows:
        cells = [r.model, *(f"{r.metrics[f'R@{k}']:.1f}" for k in KS), f"{r.metrics['SumR']:.1f}", f"{r.parameters:,}",
                 f"{r.train_epoch_s:.1f}", f"{r.eval_s:.1f}", f"{r.index_bytes_per_video:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
