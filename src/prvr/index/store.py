"""On-disk index of video tokens: L2-normalised clip and frame tokens in float16, memory-mapped, in shards.

INDEX/
  manifest.json          format, model config, score weights, text encoder, shard list (written last, atomically)
  model.safetensors      the checkpoint the tokens were computed with (the index is self-contained)
  shard-00000/           clip.npy (n, Kc, D) f16 · frames.npy (total_frames, D) f16 · frame_offsets.npy (n+1,)
                         ids.json · meta.json (per video: duration, frame_times, n_raw_frames)

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
from prvr.io import write_json_atomic

FORMAT = "prvr-index-1"


class IndexError_(PrvrError):
    """A missing, corrupt or incompatible index."""


@dataclass
class Shard:
    path: Path
    ids: list[str]
    clip: np.ndarray  # (n, Kc, D) float16, memory-mapped
    frames: np.ndarray  # (total_frames, D) float16, memory-mapped
    offsets: np.ndarray  # (n + 1,) int64
    meta: list[dict]


def read_manifest(path: Path) -> dict:
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.exists():
        raise IndexError_(f"{path}: not a prvr index (no manifest.json)")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise IndexError_(f"{mf}: corrupt manifest ({e.msg})") from None
    if manifest.get("format") != FORMAT:
        raise IndexError_(f"{mf}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def create_index(path: Path, checkpoint: Path, config: dict, text_encoder: dict | None) -> dict:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, path / ".model.safetensors.tmp")
    (path / ".model.safetensors.tmp").replace(path / "model.safetensors")
    manifest = {"format": FORMAT, "config": config, "text_encoder": text_encoder, "shards": [], "n_videos": 0}
    write_json_atomic(path / "manifest.json", manifest)
    return manifest


def append_shard(path: Path, manifest: dict, ids: list[str], clip: np.ndarray, frames: list[np.ndarray],
                 meta: list[dict]) -> dict:
    """Write one shard (tmp dir + rename), then the manifest that lists it."""
    path = Path(path)
    name = f"shard-{len(manifest['shards']):05d}"
    tmp = path / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)
    np.save(tmp / "clip.npy", clip.astype(np.float16))
    np.save(tmp / "frames.npy", np.concatenate(frames).astype(np.float16))
    np.save(tmp / "frame_offsets.npy", offsets)
    (tmp / "ids.json").write_text(json.dumps(ids))
    (tmp / "meta.json").write_text(json.dumps(meta))
    if (path / name).exists():  # left over from a killed run that never reached the manifest
        shutil.rmtree(path / name)
    tmp.rename(path / name)
    manifest = {**manifest, "shards": manifest["shards"] + [name], "n_videos": manifest["n_videos"] + len(ids)}
    write_json_atomic(path / "manifest.json", manifest)
    return manifest


def load_shard(path: Path) -> Shard:
    try:
        return Shard(path, json.loads((path / "ids.json").read_text()),
                     np.load(path / "clip.npy", mmap_mode="r"), np.load(path / "frames.npy", mmap_mode="r"),
                     np.load(path / "frame_offsets.npy"), json.loads((path / "meta.json").read_text()))
    except (OSError, ValueError) as e:
        raise IndexError_(f"{path}: corrupt shard ({e.__class__.__name__}: {e})") from None
