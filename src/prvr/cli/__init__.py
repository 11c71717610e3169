"""`prvr`: one entry point, one sub-command per job. User errors print one line and exit with code 2."""

from __future__ import annotations

import signal
import sys

import typer

# the sub-commands register on import, in the order `prvr --help` lists them
from prvr.cli import (
    data,  # noqa: F401, I001
    index,  # noqa: F401
    media,  # noqa: F401
    train,  # noqa: F401
)
from prvr.cli.common import app
from prvr.cli.errors import report
from prvr.errors import PrvrError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _user_message(e: BaseException) -> str:
    """The message of a user error; one raised in a DataLoader worker arrives wrapped with the worker's traceback
    (torch re-raises it as "Caught X in DataLoader worker ... Original Traceback ..."): its last line is kept."""
    text = str(e)
    if "Original Traceback" in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(("prvr.errors.", "prvr.")) and ": " in last else last
    return _one_line(text)


def _allowed_range(param) -> str:
    """The range an option declares (typer's own message names only the bound that failed)."""
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is None and hi is None:
        return ""
    return f"; allowed: {'' if lo is None else f'{lo} <= '}x{'' if hi is None else f' <= {hi}'}"


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C: temporaries are removed on the way out
    from prvr.io import TERMINATING

    TERMINATING.set()  # and nothing more is committed, even if this exception gets swallowed on its way
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    from prvr.io import DISK_ERRNOS, output_error
    from prvr.runtime import tune_allocator

    tune_allocator()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        rv = app(args=argv, prog_name="prvr", standalone_mode=False)
    except PrvrError as e:
        report(f"error: {_user_message(e)}")
        sys.exit(2)
    except typer.TyperException as e:  # bad options and arguments: one line, the allowed values in it
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `prvr` or `prvr data` alone: the help
            print(ctx.get_help())
            sys.exit(2)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        allowed = _allowed_range(getattr(e, "param", None))
        print(f"error: {_one_line(e.format_message())}{allowed}{where}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a write the code did not foresee failing on a full or read-only disk
        if e.errno not in DISK_ERRNOS:
            raise
        print(f"error: {_one_line(output_error(e.filename or 'output', e))}", file=sys.stderr)
        sys.exit(2)
    from prvr.io import TERMINATING

    sys.exit(143 if TERMINATING.is_set() else rv if isinstance(rv, int) else 0)


__all__ = ["app", "main"]
