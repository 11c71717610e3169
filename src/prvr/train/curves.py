"""Training curves from runs' `metrics.jsonl`: per epoch the mean training loss and the validation SumR, of one run or
of several runs (seeds) as mean and spread, and `prvr plot` drawing them on one PNG."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prvr.errors import DataError, PrvrError
from prvr.io import atomic_path


@dataclass
class Curve:
    """One run: per epoch (0-based, in file order) the mean training loss and the validation SumR."""

    run: Path
    epochs: list[int]
    loss: list[float]
    sumr: list[float]


def read_curve(run: str | Path) -> Curve:
    """Read RUN/metrics.jsonl (prvr's runs and bench/reference/train_curve_original.py's both write it): each line
    has `epoch`, `train.loss` and one evaluation split (`val` or `test`) with `SumR`."""
    run = Path(run)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise DataError(f"{path}: no metrics.jsonl (expected a run folder written by `prvr train`)")
    epochs, loss, sumr = [], [], []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            split = next(k for k, v in rec.items() if isinstance(v, dict) and "SumR" in v)
            values = (int(rec["epoch"]), float(rec["train"]["loss"]), float(rec[split]["SumR"]))
        except (json.JSONDecodeError, StopIteration, KeyError, TypeError, ValueError):
            raise DataError(f"{path}:{no}: expected a JSON record with epoch, train.loss and a split's SumR") from None
        if not all(math.isfinite(v) for v in values[1:]):
            raise DataError(f"{path}:{no}: train.loss or SumR is not a finite number")
        epochs.append(values[0])
        loss.append(values[1])
        sumr.append(values[2])
    if not epochs:
        raise DataError(f"{path}: no epoch recorded yet")
    if epochs != list(range(len(epochs))):
        raise DataError(f"{path}: epochs {epochs} are not 0, 1, 2, ... (a resumed run logs each epoch once)")
    return Curve(run, epochs, loss, sumr)


@dataclass
class CurveGroup:
    """Several runs of one setup (e.g. seeds): per epoch the mean and the sample standard deviation, over the
    epochs all runs reached."""

    label: str
    curves: list[Curve]

    @property
    def epochs(self) -> int:
        return min(len(c.epochs) for c in self.curves)

    def values(self, what: str) -> np.ndarray:
        """(runs, epochs) of `loss` or `sumr`."""
        return np.array([getattr(c, what)[: self.epochs] for c in self.curves], dtype=np.float64)

    def mean(self, what: str) -> np.ndarray:
        return self.values(what).mean(axis=0)

    def spread(self, what: str) -> np.ndarray:
        """Sample standard deviation over runs (0 for a single run)."""
        v = self.values(what)
        return v.std(axis=0, ddof=1) if len(v) > 1 else np.zeros(v.shape[1])


def parse_groups(specs: list[str]) -> list[CurveGroup]:
    """`RUN` (one run, labelled by its folder name) or `LABEL=RUN1,RUN2,...` (runs averaged into one curve)."""
    groups = []
    for spec in specs:
        label, sep, runs = spec.partition("=")
        if sep and not label:
            raise PrvrError(f"{spec!r}: expected RUN or LABEL=RUN1,RUN2,... (empty label)")
        paths = [p for p in runs.split(",") if p] if sep else [spec]
        if not paths:
            raise PrvrError(f"{spec!r}: no run after {label}=")
        groups.append(CurveGroup(label if sep else Path(spec).name or spec, [read_curve(p) for p in paths]))
    return groups


def plot_curves(groups: list[CurveGroup], out: str | Path, title: str | None = None) -> Path:
    """Two panels (mean training loss, validation SumR per epoch), one line per group with a band of +- one
    standard deviation where a group has several runs; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for g in groups:
        x = np.arange(g.epochs)
        n = len(g.curves)
        label = g.label if n == 1 else f"{g.label} (mean of {n} runs, band: ±1 sd)"
        for ax, what in zip(axes, ("loss", "sumr"), strict=True):
            mean, sd = g.mean(what), g.spread(what)
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=label)
            if n > 1:
                ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    for ax, ylabel in zip(axes, ("mean training loss", "validation SumR"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
