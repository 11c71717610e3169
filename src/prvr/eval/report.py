"""Tables of metrics for people (rich)."""

from __future__ import annotations

from rich.table import Table

from prvr.eval.metrics import KS

COLUMNS = tuple(f"R@{k}" for k in KS) + ("SumR",)


def metrics_table(rows: dict[str, dict[str, float]], title: str = "") -> Table:
    t = Table(title=title or None)
    t.add_column("")
    for k in COLUMNS:
        t.add_column(k, justify="right")
    for name, m in rows.items():
        t.add_row(name, *(f"{m[k]:.1f}" for k in COLUMNS))
    return t
