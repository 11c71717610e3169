"""Atomic writes: a killed run never leaves a half-written file behind, and a failed write is one clear line.

Every output goes to a hidden temporary beside its target (`.NAME.<pid>.<random>.tmp`) and is renamed onto
the target only when complete; on any error the temporary is removed. A temporary whose process is gone (a
run killed with SIGKILL) is removed by the next write into the same directory. A write that fails because
the disk is full, the directory read-only or not permitted raises `OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from prvr.errors import OutputError

# errors of any write that say "the output cannot be written here", not "the program has a bug"
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}
# set when the process is asked to stop (SIGTERM): no output is committed after that, even if the exception the
# signal handler raised was swallowed somewhere (e.g. inside a C extension's cleanup callback)
TERMINATING = threading.Event()
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def output_error(path: str | os.PathLike, e: OSError, what: str = "cannot write") -> OutputError:
    """An OSError of a write as a one-line user error naming the path (and the disk or permission problem)."""
    reason = e.strerror or e.__class__.__name__
    if e.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif e.errno == errno.EROFS:
        reason = "read-only file system"
    return OutputError(f"{path}: {what} ({reason})")


def _check_not_terminating() -> None:
    if TERMINATING.is_set():
        raise SystemExit(143)


def _is_output_error(e: OSError, *paths: Path) -> bool:
    """A disk-level failure of any write, or any failure on the output's own paths (not on an input read)."""
    if e.errno in DISK_ERRNOS:
        return True
    names = {str(e.filename or ""), str(e.filename2 or "")}
    return any(str(p) in names or any(n.startswith(f"{p}{os.sep}") for n in names if n) for p in paths)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of atomic writes into `directory` whose writing process no longer runs."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def temp_name(path: Path) -> str:
    """A hidden, process-tagged temporary name beside `path` (for files and directories alike)."""
    return f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def make_dirs(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: exists and is not a directory") from None
    except OSError as e:
        raise output_error(path, e, "cannot create the directory") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    make_dirs(path.parent)
    remove_stale_temps(path.parent)
    tmp_path = path.parent / temp_name(path)
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # ordinary permissions (umask)
        os.close(fd)
    except OSError as e:
        raise output_error(path, e) from None
    try:
        try:
            yield tmp_path
            _check_not_terminating()
            if path.is_dir() and not path.is_symlink():
                raise OutputError(f"{path}: is a directory, expected a file path")
            os.replace(tmp_path, path)
        except OSError as e:
            if _is_output_error(e, path, tmp_path):
                raise output_error(path, e) from None
            raise
    finally:
        with contextlib.suppress(OSError):
            if tmp_path.exists():
                tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    make_dirs(path.parent)
    remove_stale_temps(path.parent)
    tmp = path.parent / temp_name(path)
    try:
        tmp.mkdir()
    except OSError as e:
        raise output_error(path, e) from None
    try:
        try:
            yield tmp
            _check_not_terminating()
            if path.exists():  # left over from a killed run that never reached its manifest
                shutil.rmtree(path)
            tmp.rename(path)
        except OSError as e:
            if _is_output_error(e, path, tmp):
                raise output_error(path, e) from None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def check_writable(path: str | os.PathLike, what: str = "output", directory: bool = False) -> Path:
    """Before long work: fail now, in one line, if `path` (a file, or a directory with directory=True) cannot
    be written. Creates missing parent directories, as the write would."""
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path}: {what} exists and is not a directory")
        parent = path
    else:
        if path.is_dir():
            raise OutputError(f"{path}: {what} is a directory, expected a file path")
        parent = path.parent
    existing = parent
    while not existing.exists():  # probe the deepest existing directory; create nothing yet
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{path}: {what}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".prvr-probe.{os.getpid()}.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise output_error(path, e, f"{what} is not writable") from None
    return path


def check_free_space(path: str | os.PathLike, needed: int, what: str = "output") -> None:
    """Refuse up front when the file system holding `path` has clearly too little room for `needed` bytes."""
    existing = Path(path)
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise OutputError(f"{path}: {what} needs about {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB free")
