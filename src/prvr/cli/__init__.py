"""`prvr`: one entry point, one sub-command per job. User errors print one line and exit with code 2."""

from __future__ import annotations

import sys

# the sub-commands register on import, in the order `prvr --help` lists them
from prvr.cli import (
    data,  # noqa: F401, I001
    index,  # noqa: F401
    media,  # noqa: F401
    train,  # noqa: F401
)
from prvr.cli.common import app
from prvr.errors import PrvrError


def main() -> None:
    from prvr.runtime import tune_allocator

    tune_allocator()
    try:
        app()
    except PrvrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


__all__ = ["app", "main"]
