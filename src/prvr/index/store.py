"""On-disk index of video tokens: every token set of the model (clip cells, frames, proposals, ...) in float16,
memory-mapped, in shards. Tokens are L2-normalised when the model scores by max-similarity.

INDEX/
  manifest.json          format, run config, token sets (their time layouts), score weights, text encoder,
                         media roots (folders `prvr serve` may send video files from), shard list (written
                         last, atomically)
  model.safetensors      the checkpoint the tokens were computed with (the index is self-contained)
  shard-00000/           <set>.tokens.npy (total tokens, D) f16 · <set>.offsets.npy (n+1,) int64 per token set
                         ids.json · meta.json (per video: duration, frame_times, n_raw_frames, file)

A shard directory is written under a temporary name and renamed; the manifest is replaced only after. A killed
build therefore leaves the previous index intact, and `build --resume`/`add` skip ids already present. Reading
checks every part where it enters (a crafted index is refused in one line, never served or scored).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prvr.data.features import video_info_problem
from prvr.errors import PrvrError
from prvr.io import atomic_dir, atomic_path, make_dirs, remove_stale_temps, write_json_atomic
from prvr.models.base import TokenLayout

FORMAT = "prvr-index-2"


class IndexError_(PrvrError):
    """A missing, corrupt or incompatible index."""



def tensor_view(a: np.ndarray) -> torch.Tensor:
    """A read-only memory map as a tensor, without a copy (nothing writes to it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


@dataclass
class ShardTokens:
    tokens: np.ndarray  # (total tokens, D) float16, memory-mapped
    offsets: np.ndarray  # (n + 1,) int64: video i owns rows offsets[i]:offsets[i+1]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class Shard:
    path: Path
    ids: list[str]
    sets: dict[str, ShardTokens]
    meta: list[dict]


def _fail(where: Path, what: str) -> IndexError_:
    return IndexError_(f"{where}: {what}")


def read_manifest(path: Path) -> dict:
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise _fail(path, "not a prvr index (no manifest.json)")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise _fail(mf, f"corrupt manifest ({getattr(e, 'msg', e.__class__.__name__)})") from None
    except OSError as e:
        raise _fail(mf, f"unreadable manifest ({e.strerror})") from None
    if not isinstance(manifest, dict):
        raise _fail(mf, f"corrupt manifest (expected an object, got {type(manifest).__name__})")
    if manifest.get("format") != FORMAT:
        raise _fail(mf, f"format {manifest.get('format')!r}, expected {FORMAT!r} (rebuild it with `prvr index build`)")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, str) and _plain_name(s) for s in shards):
        raise _fail(mf, "corrupt manifest (shards must be plain directory names inside the index)")
    if len(set(shards)) != len(shards):
        raise _fail(mf, "corrupt manifest (a shard is listed twice)")
    real = path.resolve()
    for s in shards:  # a shard folder that is a symlink out of the index is not part of it
        if (path / s).exists() and not (path / s).resolve().is_relative_to(real):
            raise _fail(mf, f"corrupt manifest (shard {s!r} lies outside the index directory)")
    sets = manifest.get("token_sets")
    if not isinstance(sets, dict) or not sets or not all(isinstance(k, str) and _plain_name(k) for k in sets):
        raise _fail(mf, "corrupt manifest (no token sets, or a token set name that is not a plain name)")
    try:
        layouts_of(manifest)
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # AttributeError: a layout that is not an object
        raise _fail(mf, f"corrupt manifest (token set layouts: {e.__class__.__name__})") from None
    weights = manifest.get("score_weights")
    if not isinstance(weights, dict) or not all(k in sets and _finite(v) and v >= 0 for k, v in weights.items()):
        raise _fail(mf, "corrupt manifest (score_weights: expected a finite weight >= 0 per token set)")
    if not isinstance(manifest.get("config"), dict) or not isinstance(manifest["config"].get("model"), dict):
        raise _fail(mf, "corrupt manifest (config: expected the run config)")
    roots = manifest.get("media_roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) and Path(r).is_absolute() for r in roots):
        raise _fail(mf, "corrupt manifest (media_roots: expected a list of absolute folders)")
    enc = manifest.get("text_encoder")
    if enc is not None and not (isinstance(enc, dict) and isinstance(enc.get("kind"), str)):
        raise _fail(mf, "corrupt manifest (text_encoder: expected an encoder spec)")
    return manifest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plain_name(name: str) -> bool:
    """A shard name that stays inside the index directory: no separators, no `..`, not hidden."""
    return bool(name) and name == Path(name).name and not name.startswith(".") and "\\" not in name


def layouts_of(manifest: dict) -> dict[str, TokenLayout]:
    return {name: TokenLayout.from_dict(d) for name, d in manifest["token_sets"].items()}


def create_index(path: Path, checkpoint: Path, config: dict, token_sets: dict[str, TokenLayout],
                 score_weights: dict[str, float], normalized: bool, text_encoder: dict | None,
                 media_roots: list[str] | None = None, extra: dict | None = None) -> dict:
    """`extra`: more manifest entries (e.g. `encoders`: what `prvr ingest` encoded the frames with)."""
    path = make_dirs(path)
    with atomic_path(path / "model.safetensors") as tmp:
        shutil.copyfile(checkpoint, tmp)
    manifest = {"format": FORMAT, "config": config, "token_sets": {k: v.to_dict() for k, v in token_sets.items()},
                "score_weights": score_weights, "normalized": normalized, "text_encoder": text_encoder,
                "media_roots": sorted(media_roots or []), **(extra or {}), "shards": [], "n_videos": 0}
    write_json_atomic(path / "manifest.json", manifest)
    return manifest


def discard_empty_index(path: Path, created: bool) -> None:
    """Remove an index this process created that holds no shard (a build that failed up front)."""
    path = Path(path)
    try:
        if read_manifest(path)["shards"]:
            return
    except IndexError_:
        if (path / "manifest.json").exists():
            return  # not ours to judge
    if created:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in ("manifest.json", "model.safetensors"):
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()
    remove_stale_temps(path)


def append_shard(path: Path, manifest: dict, ids: list[str], sets: dict[str, list[np.ndarray]],
                 meta: list[dict]) -> dict:
    """Write one shard (temporary dir + rename), then the manifest that lists it. `sets`: per token set, one
    (n_tokens_i, D) array per video."""
    path = Path(path)
    name = next_shard_name(manifest)
    write_shard(path, name, ids, sets, meta)
    manifest = {**manifest, "shards": manifest["shards"] + [name], "n_videos": manifest["n_videos"] + len(ids)}
    write_json_atomic(path / "manifest.json", manifest)
    return manifest


def write_shard(path: Path, name: str, ids: list[str], sets: dict[str, list[np.ndarray]], meta: list[dict]) -> None:
    """Write shard `name` (temporary dir + rename) without listing it in the manifest (see `append_shard`)."""
    with atomic_dir(Path(path) / name) as tmp:  # a shard left by a killed run that never reached the manifest is replaced
        for set_name, per_video in sets.items():
            offsets = np.concatenate([[0], np.cumsum([len(t) for t in per_video])]).astype(np.int64)
            np.save(tmp / f"{set_name}.tokens.npy", np.concatenate(per_video).astype(np.float16))
            np.save(tmp / f"{set_name}.offsets.npy", offsets)
        (tmp / "ids.json").write_text(json.dumps(ids), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, allow_nan=False), encoding="utf-8")


THUMBS = "thumbs"  # INDEX/thumbs/<thumb_key(video id)>/<frame row>.jpg, written by `prvr ingest`


def thumb_key(video_id: str) -> str:
    """The folder name of a video's thumbnails (a hash: video ids may hold any character)."""
    import hashlib

    return hashlib.sha256(video_id.encode("utf-8")).hexdigest()[:20]


def next_shard_name(manifest: dict) -> str:
    """A name after every listed shard (never one the manifest lists, also after shards were removed)."""
    numbers = [int(n.rpartition("-")[2]) for n in manifest["shards"] if n.rpartition("-")[2].isdigit()]
    return f"shard-{max(numbers, default=-1) + 1:05d}"


def remove_videos(path: Path, manifest: dict, video_ids: list[str]) -> tuple[dict, list[str]]:
    """Drop videos from an index: each shard holding one is rewritten without it under a new name (or dropped when
    nothing is left), the manifest that lists the new shards is written, then the old shard folders are removed.
    A kill at any point leaves a consistent index. -> (manifest, the ids that were found and removed)."""
    path, wanted = Path(path), set(video_ids)
    sets = list(manifest["token_sets"])
    shards, stale, removed = [], [], []
    for name in manifest["shards"]:
        shard = load_shard(path / name, sets)
        drop = [i for i, v in enumerate(shard.ids) if v in wanted]
        if not drop:
            shards.append(name)
            continue
        removed.extend(shard.ids[i] for i in drop)
        stale.append(name)
        keep = [i for i in range(len(shard.ids)) if i not in set(drop)]
        if not keep:
            continue
        new = next_shard_name({"shards": manifest["shards"] + shards + stale})
        with atomic_dir(path / new) as tmp:
            for s, st in shard.sets.items():
                rows = [np.asarray(st.tokens[st.offsets[i]:st.offsets[i + 1]]) for i in keep]
                np.save(tmp / f"{s}.tokens.npy", np.concatenate(rows).astype(np.float16))
                np.save(tmp / f"{s}.offsets.npy", np.concatenate([[0], np.cumsum([len(r) for r in rows])]
                                                                 ).astype(np.int64))
            (tmp / "ids.json").write_text(json.dumps([shard.ids[i] for i in keep]), encoding="utf-8")
            (tmp / "meta.json").write_text(json.dumps([shard.meta[i] for i in keep], allow_nan=False),
                                           encoding="utf-8")
        shards.append(new)  # listed in `shards`: a later new name comes after it
    if not removed:
        return {**manifest, "shards": shards}, []
    manifest = {**manifest, "shards": shards, "n_videos": manifest["n_videos"] - len(removed)}
    write_json_atomic(path / "manifest.json", manifest)
    for name in stale:
        shutil.rmtree(path / name, ignore_errors=True)
    for v in removed:
        shutil.rmtree(path / THUMBS / thumb_key(v), ignore_errors=True)
    return manifest, removed


FINITE_CHUNK = 1 << 24  # float16 values checked at a time (32 MB)


def nonfinite_rows(tokens: np.ndarray) -> np.ndarray:
    """Rows of a float16 (T, D) matrix holding NaN or Inf (all five exponent bits set), in chunks: the largest
    exponent field of a chunk is one vectorised pass over the raw bits; rows are located only where it is all ones."""
    bad = []
    step = max(1, FINITE_CHUNK // max(1, tokens.shape[1]))
    for a in range(0, tokens.shape[0], step):
        chunk = np.asarray(tokens[a:a + step]).view(np.int16)
        top = int((tensor_view(chunk) & 0x7C00).max()) if chunk.size else 0
        if top == 0x7C00:
            bad.append(np.flatnonzero(((chunk & 0x7C00) == 0x7C00).any(axis=1)) + a)
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def load_shard(path: Path, set_names: list[str], layouts: dict[str, TokenLayout] | None = None) -> Shard:
    """Open one shard memory-mapped and check every part where it enters: ids, meta (durations, frame times),
    offsets against token rows and the token layouts, float16 tokens of one width, all finite."""
    ids, meta = _read_json(path / "ids.json"), _read_json(path / "meta.json")
    try:
        sets = {s: ShardTokens(np.load(path / f"{s}.tokens.npy", mmap_mode="r", allow_pickle=False),
                               np.load(path / f"{s}.offsets.npy", allow_pickle=False)) for s in set_names}
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _fail(path, f"corrupt shard ({e.__class__.__name__}: {_first_line(e)})") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise _fail(path / "ids.json", "expected a list of video ids")
    if len(set(ids)) != len(ids):
        raise _fail(path / "ids.json", "a video id appears twice")
    if not isinstance(meta, list) or len(meta) != len(ids) or not all(isinstance(m, dict) for m in meta):
        raise _fail(path / "meta.json", f"expected {len(ids)} objects, one per video id")
    for vid, m in zip(ids, meta, strict=True):
        problem = video_info_problem(m)
        if problem:
            raise _fail(path / "meta.json", f"video {vid!r}: {problem}")
    dims = set()
    for s, t in sets.items():
        o = t.offsets
        if (o.ndim != 1 or not np.issubdtype(o.dtype, np.integer) or len(o) != len(ids) + 1 or o[0] != 0
                or np.any(np.diff(o) < 0) or t.tokens.ndim != 2 or o[-1] != t.tokens.shape[0]):
            raise _fail(path, f"corrupt shard (token set {s!r}: offsets do not match {len(ids)} videos and "
                              f"{t.tokens.shape[0] if t.tokens.ndim else 0} token rows)")
        if t.tokens.dtype != np.float16 or t.tokens.shape[1] == 0:
            raise _fail(path, f"corrupt shard (token set {s!r}: {t.tokens.dtype} tokens of width "
                              f"{t.tokens.shape[1]}, expected float16 rows)")
        dims.add(t.tokens.shape[1])
        layout = (layouts or {}).get(s)
        counts = t.counts
        if layout is not None and len(counts) and (
                counts.max() > layout.capacity or (not layout.ragged and counts.min() != layout.capacity)
                or (layout.ragged and counts.min() < 1)):
            raise _fail(path, f"corrupt shard (token set {s!r}: videos with {counts.min()}..{counts.max()} tokens, "
                              f"expected {'1..' if layout.ragged else ''}{layout.capacity})")
        bad = nonfinite_rows(t.tokens)
        if len(bad):
            owner = int(np.searchsorted(o, bad[0], side="right") - 1)
            raise _fail(path, f"corrupt shard (token set {s!r}: video {ids[owner]!r} has NaN/Inf tokens; rebuild "
                              "the index)")
    if len(dims) > 1:
        raise _fail(path, f"corrupt shard (token sets of different widths {sorted(dims)})")
    return Shard(path, ids, sets, meta)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _fail(path, f"corrupt shard file ({e.__class__.__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
