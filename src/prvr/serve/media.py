"""Which files the server may send: regular video files under the media roots, and nothing else.

A video's `file` entry in an index is data someone else may have written: it is never used as-is. The path must
be absolute; symlinks are resolved first; the real path must lie under one of the media roots (given to
`prvr serve --media-root` or recorded in the index when its videos were extracted); it must be a regular file
whose extension is a video's and whose first bytes are that container's signature.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

# container signatures by extension: (offset, bytes) alternatives
_ISO_BMFF = [(4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"), (4, b"pnot")]
_MATROSKA = [(0, b"\x1a\x45\xdf\xa3")]
_MPEG_PS = [(0, b"\x00\x00\x01\xba"), (0, b"\x00\x00\x01\xb3")]
SIGNATURES: dict[str, list[tuple[int, bytes]]] = {
    ".mp4": _ISO_BMFF, ".m4v": _ISO_BMFF, ".mov": _ISO_BMFF, ".mkv": _MATROSKA, ".webm": _MATROSKA,
    ".avi": [(8, b"AVI ")], ".mpg": _MPEG_PS, ".mpeg": _MPEG_PS, ".flv": [(0, b"FLV")],
    ".wmv": [(0, bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"))],
}
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
               ".webm": "video/webm", ".avi": "video/x-msvideo", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
               ".flv": "video/x-flv", ".wmv": "video/x-ms-wmv"}


def is_video_container(path: Path) -> bool:
    """The file's first bytes are the signature of the container its extension names."""
    sigs = SIGNATURES.get(path.suffix.lower())
    if not sigs:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if path.suffix.lower() == ".avi" and head[:4] != b"RIFF":
        return False
    return any(head[o:o + len(sig)] == sig for o, sig in sigs)


class MediaRoots:
    """The folders video files may be sent from (resolved; missing folders are left out and listed in `missing`)."""

    def __init__(self, roots: Iterable[str | os.PathLike]):
        self.roots: list[Path] = []
        self.missing: list[str] = []
        for r in roots:
            try:
                real = Path(r).expanduser().resolve(strict=True)
            except (OSError, RuntimeError):
                self.missing.append(str(r))
                continue
            if real.is_dir() and real not in self.roots:
                self.roots.append(real)

    def __bool__(self) -> bool:
        return bool(self.roots)

    def resolve(self, name: object) -> Path | None:
        """The real path of a servable video file named by an index entry, or None (then the answer is 404)."""
        if not isinstance(name, str) or not name or "\x00" in name:
            return None
        p = Path(name)
        if not p.is_absolute():  # never relative to the server's working directory
            return None
        try:
            real = p.resolve(strict=True)  # symlinks first, then the confinement check on the real path
            st = real.stat()
        except (OSError, RuntimeError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode) or not any(real.is_relative_to(r) for r in self.roots):
            return None
        return real if is_video_container(real) else None

    def media_type(self, path: Path) -> str:
        return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
