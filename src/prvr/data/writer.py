"""The one writer of the standard release layout: synthetic benchmarks, the everyday corpus and `prvr extract`
all write through `DatasetWriter`, so every dataset prvr makes is laid out exactly like the authors' release.

Features and query tokens stream into temporary HDF5 files; on a clean exit every file is first complete in its
temporary (caption files, video2frames.txt, video_info.json, text_encoder.json, media_roots.json, extra JSON),
then all are moved into place, and layout files of a previous dataset that this one lacks are removed. On an
error (a full disk included) the temporaries are removed and the files of a previous run stay as they were.
Non-finite features are refused where they enter.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from prvr.data.features import read_video2frames
from prvr.data.layout import SPLITS, DatasetLayout
from prvr.errors import DataError
from prvr.io import atomic_path, output_error, write_text_atomic


class DatasetWriter:
    def __init__(self, root: str | Path, collection: str, visual_feature: str | None = None):
        self.layout = DatasetLayout(Path(root), collection, visual_feature)
        self._stack: contextlib.ExitStack | None = None
        self._videos: h5py.File | None = None
        self._queries: h5py.File | None = None
        self._frame_ids: dict[str, list[str]] = {}
        self._info: dict[str, dict] = {}
        self._captions: dict[str, list[str]] = defaultdict(list)
        self._text_encoder: dict | None = None
        self._media_roots: list[str] = []
        self._extra: dict[str, Any] = {}
        self.visual_dim: int | None = None
        self._written: set[Path] = set()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> DatasetWriter:
        self.layout.text_dir.mkdir(parents=True, exist_ok=True)
        self.layout.feature_dir.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack().__enter__()
        tmp = self._stack.enter_context(atomic_path(self.layout.feature_hdf5))
        self._videos = self._stack.enter_context(h5py.File(tmp, "w"))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        if exc_type is not None:  # the temporaries are removed, previous files stay
            return bool(stack.__exit__(exc_type, exc, tb))
        if not self._frame_ids:
            err = DataError(f"{self.layout.base}: no video was written; the previous files stay as they were")
            stack.__exit__(DataError, err, None)
            raise err
        with stack:  # every file is complete in its temporary before the first rename
            self._write_text_files(stack)
        self._remove_stale()  # files of a previous dataset here that this one does not have
        return False

    # ------------------------------------------------------------------ content
    def add_video(self, video_id: str, features: np.ndarray, info: dict | None = None) -> None:
        """Per-frame features (n, Dv) of one video, and optionally its duration / frame_times / file."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] == 0:
            raise DataError(f"video {video_id!r}: features of shape {features.shape}, expected (n >= 1, dim)")
        if self.visual_dim is None:
            self.visual_dim = features.shape[1]
        elif features.shape[1] != self.visual_dim:
            raise DataError(f"video {video_id!r}: dim {features.shape[1]}, expected {self.visual_dim} like the others")
        if video_id in self._frame_ids:
            raise DataError(f"video {video_id!r} written twice")
        if not np.isfinite(features).all():
            raise DataError(f"video {video_id!r}: features contain NaN or Inf")
        _create(self._videos, self.layout.feature_hdf5, video_id, features)
        self._frame_ids[video_id] = [f"{video_id}_{i}" for i in range(len(features))]
        if info is not None:
            self._info[video_id] = info

    def add_caption(self, split: str, cap_id: str, text: str, tokens: np.ndarray | None = None) -> None:
        """One `<video_id>#enc#<n> text` line of a split's caption file, and its token features (n, Dq)."""
        self._captions[split].append(f"{cap_id} {text}")
        if tokens is not None:
            self.add_query_features(cap_id, tokens)

    def add_query_features(self, cap_id: str, tokens: np.ndarray) -> None:
        if self._queries is None:
            tmp = self._stack.enter_context(atomic_path(self.layout.query_feature_file))
            self._queries = self._stack.enter_context(h5py.File(tmp, "w"))
        tokens = np.asarray(tokens, dtype=np.float32)
        if tokens.ndim != 2 or tokens.shape[0] == 0 or not np.isfinite(tokens).all():
            raise DataError(f"caption {cap_id!r}: token features of shape {tokens.shape} must be (n >= 1, dim) and finite")
        _create(self._queries, self.layout.query_feature_file, cap_id, tokens)

    def set_text_encoder(self, spec: dict) -> None:
        """The text encoder the query tokens came from, so free-text queries are later encoded the same way."""
        self._text_encoder = spec

    def set_media_roots(self, roots: list[str | Path]) -> None:
        """The folders the videos were read from: `prvr serve` sends video files from under them only."""
        self._media_roots = sorted({str(Path(r).resolve()) for r in roots})

    def add_json(self, name: str, obj: Any) -> None:
        """An extra JSON file under <root>/<collection>/ (e.g. synthetic.json)."""
        self._extra[name] = obj

    @property
    def video_ids(self) -> list[str]:
        return list(self._frame_ids)

    def _text_files(self) -> dict[Path, str]:
        lay = self.layout
        files = {lay.caption_file(split): "\n".join(lines) + "\n" for split, lines in self._captions.items()}
        files[lay.video2frames_file] = repr(self._frame_ids)
        if self._info:
            files[lay.video_info_file] = _json(self._info)
        if self._text_encoder is not None:
            files[lay.text_encoder_file] = _json(self._text_encoder)
        if self._media_roots:
            files[lay.media_roots_file] = _json({"roots": self._media_roots})
        for name, obj in self._extra.items():
            files[lay.base / name] = _json(obj)
        return files

    def _write_text_files(self, stack: contextlib.ExitStack) -> None:
        """Into temporaries held by `stack`: they are renamed into place together when it closes."""
        self._written = set(self._text_files())
        for path, text in self._text_files().items():
            stack.enter_context(atomic_path(path)).write_text(text, encoding="utf-8")

    def _remove_stale(self) -> None:
        lay = self.layout
        ours = self._written | {lay.feature_hdf5} | ({lay.query_feature_file} if self._queries is not None else set())
        candidates = [lay.caption_file(s) for s in SPLITS] + [
            lay.query_feature_file, lay.video_info_file, lay.text_encoder_file, lay.media_roots_file,
            *(lay.feature_dir / n for n in BIGFILE_PARTS)]  # a BigFile beside the new feature.hdf5 would be stale
        for path in candidates:
            if path not in ours:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


BIGFILE_PARTS = ("feature.bin", "id.txt", "shape.txt")


def _create(h5: h5py.File, path: Path, name: str, data: np.ndarray) -> None:
    """One dataset into an HDF5 file being written to `path`: a failed write (full disk) names that file."""
    try:
        h5.create_dataset(name, data=data)
    except OSError as e:
        raise output_error(path, e) from None


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def write_bigfile(layout: DatasetLayout) -> None:
    """Also write feature.hdf5's content in the BigFile form (feature.bin, id.txt, shape.txt), streaming."""
    v2f = read_video2frames(layout.video2frames_file)
    with h5py.File(layout.feature_hdf5, "r") as h5:
        dim = next(iter(h5.values())).shape[1]
        rows, names = 0, []
        with atomic_path(layout.feature_dir / "feature.bin") as tmp, open(tmp, "wb") as f:
            for vid, fids in v2f.items():
                h5[vid][...].astype("<f4").tofile(f)
                names.extend(fids)
                rows += len(fids)
    write_text_atomic(layout.feature_dir / "id.txt", " ".join(names))
    write_text_atomic(layout.feature_dir / "shape.txt", f"{rows} {dim}")
