"""`prvr ingest VIDEOS INDEX`: a folder of video files -> a searchable index, with no captions and no training.

The folder is walked recursively; a video's id is its path relative to the folder. Files are decoded (PyAV) in
worker processes while the main process encodes frames in batches with a text-aligned encoder (default: the
offline concept bank) and the training-free `maxsim` model turns them into the index's token sets (clip cells +
frames). Every `commit_videos` videos (or `commit_seconds`) a shard is appended (store.append_shard: shard first,
manifest last), so a killed run loses at most the videos since the last shard and a re-run encodes only what is
missing. A re-run also re-encodes files whose size or modification time changed, and with `prune` removes the
videos whose files are gone. A small JPEG of every sampled frame is kept under INDEX/thumbs/ for the page.

The index records the encoders (specs, preprocessing, package versions: `encoders` in the manifest); a later
ingest with another encoder, or a query encoder that differs, is refused. Decoded frames are not written in the
release layout (`DatasetWriter` writes a dataset all at once, on purpose): ingest resumes video by video.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from prvr.data.datasets import collate_videos
from prvr.data.preprocess import clip_grid, frame_sequence
from prvr.encode.encoders import (
    DEFAULT_ENCODER,
    encoder_record,
    load_frame_encoder,
    load_text_encoder,
    parse_spec,
    same_encoder,
    spec_name,
)
from prvr.encode.video import VIDEO_SUFFIXES, DecodedVideo, decode_job, die_with_parent
from prvr.errors import PrvrError
from prvr.index.build import nonfinite_videos, per_video_tokens
from prvr.index.store import (
    THUMBS,
    IndexError_,
    append_shard,
    create_index,
    discard_empty_index,
    load_shard,
    read_manifest,
    remove_videos,
    thumb_key,
)
from prvr.io import atomic_dir, check_writable, write_json_atomic
from prvr.models import build_model
from prvr.models.base import PRVRModel
from prvr.models.checkpoint import load_checkpoint, save_checkpoint
from prvr.models.presets import default_config

MODEL = "maxsim"  # the training-free model of an ingested index
THUMB_WIDTH = 160


@dataclass
class IngestReport:
    index: Path
    added: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)  # pruned (file gone) or re-encoded (file changed)
    gone: list[str] = field(default_factory=list)  # indexed, file gone, kept (no --prune)
    failures: list[str] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0  # decoding + encoding of the added videos
    n_videos: int = 0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def videos_per_minute(self) -> float:
        return 60.0 * len(self.added) / self.seconds if self.seconds else 0.0


def walk(videos: Path) -> list[Path]:
    """Video files under `videos`, recursively (hidden folders and files skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(videos):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames
                   if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES)
    return sorted(out)


def indexed_meta(index: Path, manifest: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in manifest["shards"]:
        shard = load_shard(index / name, list(manifest["token_sets"]))
        out.update(zip(shard.ids, shard.meta, strict=True))
    return out


def ingest(videos: Path, index: Path, encoder: str = DEFAULT_ENCODER, fps: float = 1.0, workers: int | None = None,
           precision: str = "fp32", prune: bool = False, device: str = "cpu", progress: bool = True,
           commit_videos: int = 16, commit_seconds: float = 60.0, thumb_width: int = THUMB_WIDTH) -> IngestReport:
    videos, index = Path(videos), Path(index)
    if not videos.is_dir():
        raise PrvrError(f"{videos}: not a directory")
    if not 0 < fps <= 1000:
        raise PrvrError(f"fps={fps}: expected 0 < fps <= 1000")
    spec = parse_spec(encoder)
    check_writable(index, "index directory", directory=True)
    root = videos.resolve()
    rep = IngestReport(index)
    exists = (index / "manifest.json").exists()
    manifest = read_manifest(index) if exists else None
    if manifest is not None:
        _check_same_encoder(index, manifest, spec, fps)
    indexed = indexed_meta(index, manifest) if manifest is not None else {}

    # what to do: new files, changed files (re-encoded), files gone (pruned or reported)
    todo: list[tuple[str, Path]] = []
    changed: list[str] = []
    for path in walk(videos):
        vid, real = path.relative_to(videos).as_posix(), str(path.resolve())
        m = indexed.get(vid)
        if m is None:
            todo.append((vid, path))
        elif m.get("file") != real:
            rep.failures.append(f"{path}: video id {vid!r} is indexed already for another file; not added")
        elif _stamp(path) != (m.get("size"), m.get("mtime_ns")):
            changed.append(vid)
            todo.append((vid, path))
        else:
            rep.unchanged += 1
    gone = [v for v, m in indexed.items() if isinstance(m.get("file"), str) and Path(m["file"]).is_relative_to(root)
            and not Path(m["file"]).exists()]
    if prune:
        changed += gone
    else:
        rep.gone = gone
    created = not index.exists()
    try:
        fenc = load_frame_encoder(spec, device, precision)
        if manifest is not None and changed:  # (after the encoder loaded: a failure there removes nothing)
            manifest, removed = remove_videos(index, manifest, changed)
            rep.removed = [v for v in removed if v in set(gone)] if prune else []
        if manifest is None:
            manifest = _new_index(index, spec, fenc, fps, device)
        model, _, _ = load_checkpoint(index / "model.safetensors", device)
        if str(root) not in manifest["media_roots"]:  # `prvr serve` may send files from here
            manifest = {**manifest, "media_roots": sorted([*manifest["media_roots"], str(root)])}
            write_json_atomic(index / "manifest.json", manifest)
        if todo:
            manifest = _run(rep, todo, fenc, model, index, manifest, fps, workers, progress, commit_videos,
                            commit_seconds, thumb_width)
    except BaseException:
        if not exists:
            discard_empty_index(index, created)
        raise
    rep.n_videos = manifest["n_videos"]
    return rep


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _check_same_encoder(index: Path, manifest: dict, spec: dict, fps: float) -> None:
    enc = manifest.get("encoders")
    if manifest["config"]["model"].get("name") != MODEL or not isinstance(enc, dict) or not isinstance(
            enc.get("frame"), dict):
        raise IndexError_(f"{index}: an index built by `prvr index build` from a dataset; `prvr ingest` adds to "
                          "indexes it made (give another folder)")
    old = enc["frame"].get("spec")
    if not same_encoder(old, spec):
        raise IndexError_(f"{index}: built with encoder {spec_name(old or {})}, not {spec_name(spec)}; ingest with "
                          f"--encoder {spec_name(old or {})}, or into a new index folder")
    if enc.get("fps") != fps:
        raise IndexError_(f"{index}: built at --fps {enc.get('fps')}, not {fps}; use the same rate or a new index")


def _new_index(index: Path, spec: dict, fenc, fps: float, device: str) -> dict:
    """A fresh index of the training-free model, in the encoder's space (frames and queries of one width)."""
    try:
        tenc = load_text_encoder(spec, device)
    except PrvrError as e:
        raise PrvrError(f"ingest needs a text-aligned encoder (image and text towers of one checkpoint, or the "
                        f"concept bank): {e}") from None
    width = fenc.size
    dv = fenc.encode(np.zeros((1, width[1], width[0], 3), np.uint8)).shape[1]
    dq = getattr(tenc, "dim", None) or tenc.encode(["a"])[0].shape[1]
    if dv != dq:
        raise PrvrError(f"encoder {spec_name(spec)}: frames are {dv}-d and queries {dq}-d, not one text-aligned space "
                        "(give an image-text checkpoint such as CLIPModel or SiglipModel, or the concept bank)")
    cfg = default_config(MODEL)
    cfg.model.visual_dim = cfg.model.text_dim = int(dv)
    cfg.data.collection = "ingest"
    model = build_model(cfg.model)
    record = encoder_record(fenc, tenc, fps)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "model.safetensors", model, cfg)
        return create_index(index, ckpt, cfg.to_dict(), model.token_layouts(), model.score_weights(),
                            model.scores_by_max_similarity, spec, extra={"encoders": record})


def _run(rep: IngestReport, todo: list[tuple[str, Path]], fenc, model: PRVRModel, index: Path, manifest: dict,
         fps: float, workers: int | None, progress: bool, commit_videos: int, commit_seconds: float,
         thumb_width: int) -> dict:
    """Decode in worker processes, encode batched here, append a shard every commit_videos / commit_seconds."""
    workers = workers or max(1, (os.cpu_count() or 2) // 2)
    bar = tqdm(total=len(todo), desc="ingest", unit="video", disable=not progress)
    t0 = last = time.perf_counter()
    pending: list[tuple[str, Path, DecodedVideo, np.ndarray]] = []
    queue = deque(todo)
    running: deque = deque()
    ctx = multiprocessing.get_context("spawn")  # children import no torch: prvr.encode.video only
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent) as pool:
        try:
            while queue or running:
                while queue and len(running) < 2 * workers:  # decode ahead while this process encodes
                    vid, path = queue.popleft()
                    running.append((vid, path, pool.submit(decode_job, str(path), fps, fenc.size, thumb_width)))
                vid, path, fut = running.popleft()
                try:
                    decoded = fut.result()
                except BrokenProcessPool:
                    raise PrvrError(f"{path}: the decoder process died (out of memory?); re-run to resume") from None
                if isinstance(decoded, str):
                    rep.failures.append(decoded)
                else:
                    pending.append((vid, path, decoded, fenc.encode(decoded.frames)))
                    rep.frames += len(decoded.frames)
                bar.update(1)
                rep.seconds = time.perf_counter() - t0
                bar.set_postfix_str(f"{rep.frames / max(rep.seconds, 1e-9):.1f} frames/s", refresh=False)
                if pending and (len(pending) >= commit_videos or time.perf_counter() - last >= commit_seconds):
                    manifest = _commit(rep, pending, model, index, manifest)
                    pending, last = [], time.perf_counter()
            if pending:
                manifest = _commit(rep, pending, model, index, manifest)
        except BaseException:
            for _, _, fut in running:
                fut.cancel()
            raise
        finally:
            bar.close()
    rep.seconds = time.perf_counter() - t0
    return manifest


@torch.no_grad()
def _commit(rep: IngestReport, pending: list, model: PRVRModel, index: Path, manifest: dict) -> dict:
    """One shard: the model's token sets of the pending videos, their thumbnails, then the shard and manifest."""
    mc = model.cfg
    batch = collate_videos([(clip_grid(f, mc.map_size), frame_sequence(f, mc.max_ctx_l)) for *_, f in pending])
    device = next(iter(model.parameters()), torch.zeros(0)).device
    sets = per_video_tokens(model, model.encode_videos(batch.to(device)))
    bad = set(nonfinite_videos(sets))
    rep.failures.extend(f"{pending[i][1]}: NaN or Inf frame features; not indexed" for i in sorted(bad))
    keep = [i for i in range(len(pending)) if i not in bad]
    if not keep:
        return manifest
    ids, meta = [], []
    for i in keep:
        vid, path, decoded, _ = pending[i]
        if decoded.thumbs:
            with atomic_dir(index / THUMBS / thumb_key(vid)) as tmp:
                for j, jpg in enumerate(decoded.thumbs):
                    (tmp / f"{j}.jpg").write_bytes(jpg)
        size, mtime = _stamp(path)
        ids.append(vid)
        meta.append({"duration": decoded.duration, "frame_times": decoded.times, "n_raw_frames": len(decoded.times),
                     "file": str(path.resolve()), "size": size, "mtime_ns": mtime,
                     "thumbs": bool(decoded.thumbs)})
    manifest = append_shard(index, manifest, ids, {n: [v[i] for i in keep] for n, v in sets.items()}, meta)
    rep.added.extend(ids)
    return manifest
