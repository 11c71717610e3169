"""The one writer of the standard release layout: synthetic benchmarks, the everyday corpus and `prvr extract`
all write through `DatasetWriter`, so every dataset prvr makes is laid out exactly like the authors' release.

Features and query tokens stream into temporary HDF5 files; on a clean exit every file is moved into place
atomically (caption files, video2frames.txt, video_info.json, text_encoder.json, extra JSON). On an error the
temporaries are removed and the files of a previous run stay as they were.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from prvr.data.features import read_video2frames
from prvr.data.layout import DatasetLayout
from prvr.errors import DataError
from prvr.io import atomic_path, write_json_atomic, write_text_atomic


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
        self._extra: dict[str, Any] = {}
        self.visual_dim: int | None = None

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
        with stack:  # closes the HDF5 files and renames them into place (or removes them if this raises)
            self._write_text_files()
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
        self._videos.create_dataset(video_id, data=features)
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
        self._queries.create_dataset(cap_id, data=np.asarray(tokens, dtype=np.float32))

    def set_text_encoder(self, spec: dict) -> None:
        """The text encoder the query tokens came from, so free-text queries are later encoded the same way."""
        self._text_encoder = spec

    def add_json(self, name: str, obj: Any) -> None:
        """An extra JSON file under <root>/<collection>/ (e.g. synthetic.json)."""
        self._extra[name] = obj

    @property
    def video_ids(self) -> list[str]:
        return list(self._frame_ids)

    def _write_text_files(self) -> None:
        lay = self.layout
        for split, lines in self._captions.items():
            write_text_atomic(lay.caption_file(split), "\n".join(lines) + "\n")
        write_text_atomic(lay.video2frames_file, repr(self._frame_ids))
        if self._info:
            write_json_atomic(lay.video_info_file, self._info)
        if self._text_encoder is not None:
            write_json_atomic(lay.text_encoder_file, self._text_encoder)
        for name, obj in self._extra.items():
            write_json_atomic(lay.base / name, obj)


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
