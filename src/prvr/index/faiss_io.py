"""Writing a FAISS index file atomically: a temporary file beside it, renamed on success; a failed write (FAISS
reports a full disk as a RuntimeError) becomes one line naming the file."""

from __future__ import annotations

from pathlib import Path

from prvr.errors import OutputError
from prvr.io import atomic_path


def write_faiss(index, path: Path) -> None:
    import faiss

    with atomic_path(path) as tmp:
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as e:
            raise OutputError(f"{path}: cannot write ({str(e).splitlines()[0][:200]})") from None
