"""The run directory policy: a run is never lost or silently misread.

- A directory that holds a run (config.yaml, checkpoints, metrics.jsonl) is refused unless the run is resumed
  (`--resume`) or deliberately started over (`--overwrite`, which removes only the run's own files, and only
  once every up-front check has passed).
- A resumed run keeps its saved config; explicit changes (more epochs, a moved data root, ...) are applied on
  top and listed; the model section cannot change (the weights are that architecture).
- Paths are stored absolute, so a run resumes from any working directory.
- A fresh run that fails before its first checkpoint leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prvr.config import Override, RunConfig, read_yaml
from prvr.errors import ConfigError, PrvrError
from prvr.io import check_writable, remove_stale_temps, write_text_atomic

RUN_FILES = ("config.yaml", "last.safetensors", "best.safetensors", "metrics.jsonl")
RUN_DIRS = ("tensorboard",)


def holds_run(out: Path) -> bool:
    return any((Path(out) / f).exists() for f in RUN_FILES)


def _describe(out: Path) -> str:
    from prvr.models.checkpoint import read_metadata

    last = out / "last.safetensors"
    if last.exists():
        try:
            state = json.loads(read_metadata(last).get("train_state", "{}"))
            return f"a run stopped after epoch {state.get('epoch')} (best SumR {state.get('best_sumr', 0):.1f})"
        except (PrvrError, ValueError, TypeError, AttributeError):
            pass
    return "a run (" + ", ".join(f for f in RUN_FILES if (out / f).exists()) + ")"


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse what would lose or misread a run; check the directory is writable. Writes nothing."""
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run or start it over")
    if out.exists() and not out.is_dir():
        raise PrvrError(f"{out}: exists and is not a directory (expected a run directory)")
    if resume:
        if not (out / "last.safetensors").exists():
            raise PrvrError(f"{out / 'last.safetensors'}: nothing to resume (no last checkpoint in {out})")
    elif holds_run(out) and not overwrite:
        raise PrvrError(f"{out}: holds {_describe(out)}; pass --resume to continue it or --overwrite to start "
                        "over (or choose another --out)")
    check_writable(out, "run directory", directory=True)


def clear_run(out: Path) -> None:
    """--overwrite: remove the previous run's own files (nothing else in the directory)."""
    for f in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / f).unlink()
    for d in RUN_DIRS:
        if (out / d).is_dir():
            shutil.rmtree(out / d)
    remove_stale_temps(out)


def discard_failed_run(out: Path, created: bool) -> None:
    """A fresh run that failed before its first checkpoint: remove what it wrote (the directory if it made it)."""
    if (out / "last.safetensors").exists():
        return
    if created:
        shutil.rmtree(out, ignore_errors=True)
    else:
        clear_run(out)


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Store the data root absolute (as typed, symlinks kept), so a run resumes from any directory."""
    if cfg.data.root is not None:
        cfg.data.root = str(Path(cfg.data.root).expanduser().absolute())
    return cfg


def saved_config(out: Path) -> RunConfig:
    """The config a run was trained with (its last checkpoint's, which config.yaml mirrors)."""
    from prvr.models.checkpoint import load_config

    return load_config(Path(out) / "last.safetensors")


def config_changes(old: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
    """(section.key, old, new) for every value that differs."""
    a, b = old.to_dict(), new.to_dict()
    return [(f"{s}.{k}", a[s].get(k), v) for s in b for k, v in b[s].items() if a[s].get(k) != v]


def check_resumable(old: RunConfig, new: RunConfig, out: Path) -> list[str]:
    """Changes of a resumed run's config, as lines; the model section must not change."""
    changes = config_changes(old, new)
    model = [c for c in changes if c[0].startswith("model.")]
    if model:
        key, a, b = model[0]
        raise ConfigError(f"{out}: a resumed run keeps its model; {key} cannot change from {a!r} to {b!r} "
                          "(start a new run with another --out)")
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in changes]


def resume_config(out: Path, config_file: Path | None, overrides: Sequence[Override]) -> RunConfig:
    """The saved config of the run in `out` with explicit changes applied (a YAML file, then --set values)."""
    cfg = saved_config(out)
    if config_file is not None:
        cfg.apply(read_yaml(config_file), where=str(config_file))
    for path, value in overrides:
        cfg.set(path, value)
    return cfg.check()


def rewrite_metrics(path: Path, records: list[dict]) -> None:
    """metrics.jsonl rewritten whole and atomically (a killed run never leaves half a line)."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_metrics(path: Path, until_epoch: int | None = None) -> list[dict]:
    """The records of metrics.jsonl up to an epoch (a resumed run drops epochs after its checkpoint)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and (until_epoch is None or rec.get("epoch", until_epoch + 1) <= until_epoch):
            out.append(rec)
    return out


__all__ = ["absolute_paths", "check_resumable", "check_run_dir", "clear_run", "config_changes",
           "discard_failed_run", "holds_run", "read_metrics", "resume_config", "rewrite_metrics", "saved_config"]
