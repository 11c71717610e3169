"""User errors under torchrun: rank 0 prints its one line; the other ranks print theirs only when no launcher
collects them (`prvr train --nproc`), which then prints the lines rank 0 did not."""

from __future__ import annotations

import os
import sys
from pathlib import Path

RANK_ERRORS = "PRVR_RANK_ERRORS"  # a folder: each failing rank writes its error line to rank-<N>.txt


def report(line: str) -> None:
    """Print a user error line (to stderr) as this process's rank should."""
    rank = int(os.environ.get("RANK", "0") or 0)
    folder = os.environ.get(RANK_ERRORS)
    if folder:
        try:
            (Path(folder) / f"rank-{rank}.txt").write_text(line + "\n", encoding="utf-8")
        except OSError:
            folder = None  # the launcher's folder is gone: print it here
    if rank == 0 or not folder:
        print(line if rank == 0 else line.replace("error: ", f"error: rank {rank}: ", 1), file=sys.stderr)


def other_rank_errors(folder: str | Path) -> list[str]:
    """The distinct error lines of ranks other than 0 that rank 0 did not print, with their rank."""
    folder = Path(folder)
    first = folder / "rank-0.txt"
    seen = {first.read_text(encoding="utf-8").strip()} if first.exists() else set()
    out = []
    for f in sorted(folder.glob("rank-*.txt"), key=lambda f: int(f.stem.split("-")[1])):
        line = f.read_text(encoding="utf-8").strip()
        if line and line not in seen:
            seen.add(line)
            out.append(line.replace("error: ", f"error: {f.stem.replace('-', ' ')}: ", 1))
    return out
