"""On-disk index of video tokens: every token set of the model (clip cells, frames, proposals, ...) in float16,
memory-mapped, in shards. Tokens are L2-normalised when the model scores by max-similarity.

INDEX/
  manifest.json          format, run config, token sets (their time layouts), score weights, text encoder,
                         shard list (written last, atomically)
  model.safetensors      the checkpoint the tokens were computed with (the index is self-contained)
  shard-00000/           <set>.tokens.npy (total tokens, D) f16 · <set>.offsets.npy (n+1,) int64 per token set
                         ids.json · meta.json (per video: duration, frame_times, n_raw_frames, file)

A shard directory is written under a temporary name and renamed; the manifest is replaced only after. A killed
build therefore leaves the previous index intact, and `build --resume`/`add` skip ids already present.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prvr.errors import PrvrError
from prvr.io import atomic_path, write_json_atomic
from prvr.models.base import TokenLayout

FORMAT = "prvr-index-2"


class IndexError_(PrvrError):
    """A missing, corrupt or incompatible index."""


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
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(mf, f"corrupt manifest ({getattr(e, 'msg', e.__class__.__name__)})") from None
    if not isinstance(manifest, dict):
        raise _fail(mf, f"corrupt manifest (expected an object, got {type(manifest).__name__})")
    if manifest.get("format") != FORMAT:
        raise _fail(mf, f"format {manifest.get('format')!r}, expected {FORMAT!r} (rebuild it with `prvr index build`)")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, str) and _plain_name(s) for s in shards):
        raise _fail(mf, "corrupt manifest (shards must be plain directory names inside the index)")
    if not isinstance(manifest.get("token_sets"), dict) or not manifest["token_sets"]:
        raise _fail(mf, "corrupt manifest (no token sets)")
    return manifest


def _plain_name(name: str) -> bool:
    """A shard name that stays inside the index directory: no separators, no `..`, not hidden."""
    return bool(name) and name == Path(name).name and not name.startswith(".") and "\\" not in name


def layouts_of(manifest: dict) -> dict[str, TokenLayout]:
    return {name: TokenLayout.from_dict(d) for name, d in manifest["token_sets"].items()}


def create_index(path: Path, checkpoint: Path, config: dict, token_sets: dict[str, TokenLayout],
                 score_weights: dict[str, float], normalized: bool, text_encoder: dict | None) -> dict:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "model.safetensors") as tmp:
        shutil.copyfile(checkpoint, tmp)
    manifest = {"format": FORMAT, "config": config, "token_sets": {k: v.to_dict() for k, v in token_sets.items()},
                "score_weights": score_weights, "normalized": normalized, "text_encoder": text_encoder,
                "shards": [], "n_videos": 0}
    write_json_atomic(path / "manifest.json", manifest)
    return manifest


def append_shard(path: Path, manifest: dict, ids: list[str], sets: dict[str, list[np.ndarray]],
                 meta: list[dict]) -> dict:
    """Write one shard (tmp dir + rename), then the manifest that lists it. `sets`: per token set, one
    (n_tokens_i, D) array per video."""
    path = Path(path)
    name = f"shard-{len(manifest['shards']):05d}"
    tmp = path / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for set_name, per_video in sets.items():
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in per_video])]).astype(np.int64)
        np.save(tmp / f"{set_name}.tokens.npy", np.concatenate(per_video).astype(np.float16))
        np.save(tmp / f"{set_name}.offsets.npy", offsets)
    (tmp / "ids.json").write_text(json.dumps(ids))
    (tmp / "meta.json").write_text(json.dumps(meta))
    if (path / name).exists():  # left over from a killed run that never reached the manifest
        shutil.rmtree(path / name)
    tmp.rename(path / name)
    manifest = {**manifest, "shards": manifest["shards"] + [name], "n_videos": manifest["n_videos"] + len(ids)}
    write_json_atomic(path / "manifest.json", manifest)
    return manifest


def load_shard(path: Path, set_names: list[str]) -> Shard:
    """Open one shard memory-mapped and check that its parts agree (ids, meta, offsets, token rows)."""
    try:
        ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        sets = {s: ShardTokens(np.load(path / f"{s}.tokens.npy", mmap_mode="r", allow_pickle=False),
                               np.load(path / f"{s}.offsets.npy", allow_pickle=False)) for s in set_names}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise _fail(path, f"corrupt shard ({e.__class__.__name__}: {e})") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _fail(path / "ids.json", "expected a list of video ids")
    if not isinstance(meta, list) or len(meta) != len(ids) or not all(isinstance(m, dict) for m in meta):
        raise _fail(path / "meta.json", f"expected {len(ids)} objects, one per video id")
    for s, t in sets.items():
        o = t.offsets
        if (o.ndim != 1 or len(o) != len(ids) + 1 or o[0] != 0 or np.any(np.diff(o) < 0)
                or t.tokens.ndim != 2 or o[-1] != t.tokens.shape[0]):
            raise _fail(path, f"corrupt shard (token set {s!r}: offsets do not match {len(ids)} videos and "
                              f"{t.tokens.shape[0] if t.tokens.ndim else 0} token rows)")
    return Shard(path, ids, sets, meta)
