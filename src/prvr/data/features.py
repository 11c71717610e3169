"""Readers of the release's feature files: per-video HDF5, the older BigFile, and the query-token HDF5.

HDF5 handles open lazily and per process, so DataLoader workers never share one handle.
`video2frames.txt` is a Python literal: parsed with ast.literal_eval, never executed.
"""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import h5py
import numpy as np

from prvr.data.layout import DatasetLayout
from prvr.errors import DataError
from prvr.io import atomic_path


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0]


class Hdf5Store:
    """Flat HDF5 file: one dataset per key (video id or caption id) holding a 2-D float matrix."""

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        if not self.path.exists():
            raise DataError(f"{self.path}: {what} file not found")
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise DataError(f"{self.path}: not a readable HDF5 file ({_first_line(e)})") from None
            self._pid = os.getpid()
        return self._file

    def __contains__(self, key: str) -> bool:
        try:
            return key in self.file
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{self.path}: corrupt HDF5 file ({_first_line(e)})") from None

    def keys(self) -> list[str]:
        try:
            return list(self.file.keys())
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{self.path}: corrupt HDF5 file ({_first_line(e)})") from None

    def _dataset(self, key: str) -> h5py.Dataset:
        try:
            obj = self.file[key]
        except KeyError:
            raise DataError(f"{self.path}: no {self.what} for id {key!r}") from None
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{self.path}: {self.what} {key!r} unreadable ({_first_line(e)})") from None
        if not isinstance(obj, h5py.Dataset):
            raise DataError(f"{self.path}: {self.what} {key!r} is an HDF5 group, expected a (n, dim) matrix")
        return obj

    def get(self, key: str) -> np.ndarray:
        ds = self._dataset(key)
        if ds.ndim != 2:
            raise DataError(f"{self.path}: {self.what} {key!r} has shape {ds.shape}, expected (n, dim)")
        if not (np.issubdtype(ds.dtype, np.floating) or np.issubdtype(ds.dtype, np.integer)):
            raise DataError(f"{self.path}: {self.what} {key!r} has dtype {ds.dtype}, expected numbers")
        try:
            arr = ds[...]
        except (OSError, RuntimeError, ValueError) as e:  # e.g. a corrupt compressed chunk
            raise DataError(f"{self.path}: {self.what} {key!r} unreadable ({_first_line(e)})") from None
        return arr.astype(np.float32, copy=False)

    def length(self, key: str) -> int:
        """Number of rows of `key` without reading them."""
        ds = self._dataset(key)
        if ds.ndim != 2:
            raise DataError(f"{self.path}: {self.what} {key!r} has shape {ds.shape}, expected (n, dim)")
        return int(ds.shape[0])

    def dim(self, key: str) -> int:
        """Feature size of `key` without reading it."""
        ds = self._dataset(key)
        if ds.ndim != 2:
            raise DataError(f"{self.path}: {self.what} {key!r} has shape {ds.shape}, expected (n, dim)")
        return int(ds.shape[1])

    def __getstate__(self):
        return {"path": self.path, "what": self.what, "_file": None, "_pid": None}


def read_video2frames(path: Path) -> dict[str, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video2frames file not found")
    try:
        text = path.read_text(encoding="utf-8")
        v2f = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a Python dict literal {{video_id: [frame_id, ...]}} "
                        f"({e.__class__.__name__})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(v2f, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(f, str) for f in v) for k, v in v2f.items()):
        raise DataError(f"{path}: expected a dict {{video_id: [frame_id, ...]}} of strings")
    return v2f


class BigFileStore:
    """MS-SL's BigFile: shape.txt ("rows dims"), id.txt (row names), feature.bin (rows x dims float32)."""

    def __init__(self, feature_dir: Path, video2frames: dict[str, list[str]]):
        self.dir = Path(feature_dir)
        shape_file, id_file, bin_file = (self.dir / n for n in ("shape.txt", "id.txt", "feature.bin"))
        for f in (shape_file, id_file, bin_file):
            if not f.exists():
                raise DataError(f"{f}: BigFile part not found")
        try:
            rows, dims = (int(v) for v in shape_file.read_text(encoding="ascii").split())
        except (ValueError, UnicodeDecodeError):
            raise DataError(f"{shape_file}: expected two integers 'rows dims'") from None
        if rows < 0 or dims < 1:
            raise DataError(f"{shape_file}: expected rows >= 0 and dims >= 1, got {rows} {dims}")
        names = id_file.read_bytes().decode("latin-1").split()
        if len(names) != rows:
            raise DataError(f"{id_file}: {len(names)} ids, expected {rows} (shape.txt)")
        expected = rows * dims * 4
        if bin_file.stat().st_size != expected:
            raise DataError(f"{bin_file}: {bin_file.stat().st_size} bytes, expected {expected} ({rows}x{dims} float32)")
        self.rows = rows
        self.row_of = {name: i for i, name in enumerate(names)}
        self.matrix = np.memmap(bin_file, dtype="<f4", mode="r", shape=(rows, dims))
        self.video2frames = video2frames
        self.path = bin_file

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.video2frames

    def keys(self) -> list[str]:
        return list(self.video2frames)

    def get(self, video_id: str) -> np.ndarray:
        frames = self.video2frames.get(video_id)
        if frames is None:
            raise DataError(f"{self.dir / 'video2frames.txt'}: no entry for video {video_id!r}")
        try:
            rows = [self.row_of[f] for f in frames]
        except KeyError as e:
            raise DataError(f"{self.dir / 'id.txt'}: frame id {e.args[0]!r} of video {video_id!r} not found") from None
        return np.asarray(self.matrix[rows], dtype=np.float32)

    def length(self, video_id: str) -> int:
        if video_id not in self.video2frames:
            raise DataError(f"{self.dir / 'video2frames.txt'}: no entry for video {video_id!r}")
        return len(self.video2frames[video_id])

    def dim(self, video_id: str) -> int:
        return int(self.matrix.shape[1])


def open_video_features(layout: DatasetLayout) -> Hdf5Store | BigFileStore:
    """Prefer the converted feature.hdf5; fall back to the BigFile form."""
    if layout.feature_hdf5.exists():
        return Hdf5Store(layout.feature_hdf5, "video features")
    if (layout.feature_dir / "feature.bin").exists():
        return BigFileStore(layout.feature_dir, read_video2frames(layout.video2frames_file))
    raise DataError(f"{layout.feature_dir}: neither feature.hdf5 nor feature.bin found")


def open_query_features(layout: DatasetLayout) -> Hdf5Store:
    return Hdf5Store(layout.query_feature_file, "query features")


def convert_bigfile(layout: DatasetLayout, out: Path | None = None, progress: bool = True) -> Path:
    """Stream a BigFile into a per-video feature.hdf5 (float32), atomically; memory bounded by one video."""
    from tqdm import tqdm

    store = BigFileStore(layout.feature_dir, read_video2frames(layout.video2frames_file))
    out = Path(out) if out else layout.feature_hdf5
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as h5:
            for vid in tqdm(store.keys(), desc="convert", unit="video", disable=not progress):
                h5.create_dataset(vid, data=store.get(vid))
    return out


def read_video_info(layout: DatasetLayout) -> dict[str, dict]:
    """Optional {video_id: {"duration": s, "frame_times": [s, ...], "file": path}} beside the features ({} when
    absent). Every value is checked here, where it enters: positive finite durations, finite frame times."""
    import json

    path = layout.video_info_file
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({getattr(e, 'msg', e.__class__.__name__)})") from None
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected an object {{video_id: {{duration, frame_times}}}}")
    for vid, entry in info.items():
        problem = video_info_problem(entry)
        if problem:
            raise DataError(f"{path}: video {vid!r}: {problem}")
    return info


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def video_info_problem(entry) -> str | None:
    """What is wrong with one video's info entry (None when fine): also used for an index's meta.json."""
    if not isinstance(entry, dict):
        return "expected an object"
    d = entry.get("duration")
    if d is not None and not (_finite_number(d) and d > 0):
        return f"duration {d!r}, expected a positive number of seconds"
    times = entry.get("frame_times")
    if times is not None and not (isinstance(times, list) and all(_finite_number(t) and t >= 0 for t in times)):
        return "frame_times: expected a list of non-negative numbers of seconds"
    f = entry.get("file")
    if f is not None and not (isinstance(f, str) and f and "\x00" not in f):
        return f"file {f!r}: expected a path"
    n = entry.get("n_raw_frames")
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        return f"n_raw_frames {n!r}: expected an integer >= 0"
    return None


def read_text_encoder(layout: DatasetLayout) -> dict | None:
    """The text encoder the query tokens were made with (TextData/text_encoder.json), if recorded."""
    import json

    path = layout.text_encoder_file
    if not path.exists():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise DataError(f"{path}: expected an encoder spec object with a 'kind'")
    return spec


def read_media_roots(layout: DatasetLayout) -> list[str]:
    """The absolute folders the dataset's videos came from (FeatureData/<f>/media_roots.json; [] when absent)."""
    import json

    path = layout.media_roots_file
    if not path.exists():
        return []
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({e.__class__.__name__})") from None
    roots = d.get("roots") if isinstance(d, dict) else None
    if not isinstance(roots, list) or not all(isinstance(r, str) and Path(r).is_absolute() for r in roots):
        raise DataError(f"{path}: expected {{\"roots\": [absolute folder, ...]}}")
    return roots
