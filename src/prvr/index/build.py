"""Build or extend an index: encode each video of a dataset split once (batched) and append shards.
Any registered model: its `encode_videos` gives the token sets, its `token_layouts` say how to store them.

Under torchrun (`prvr.dist`) each rank encodes a contiguous share of the videos and writes its own shards, named
`shard-<first free number>-r<rank>-<k>` (no two ranks or builds can pick the same name); after a barrier rank 0
lists them in the manifest, in rank order (the single process's video order), written last."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from prvr import dist
from prvr.data.datasets import EvalVideos, SplitIndex, check_dims, collate_videos, screen_split
from prvr.data.features import open_video_features, read_media_roots, read_text_encoder, read_video_info
from prvr.data.layout import DatasetLayout
from prvr.errors import NonFiniteError
from prvr.index.store import (
    IndexError_,
    append_shard,
    create_index,
    discard_empty_index,
    load_shard,
    read_manifest,
    write_shard,
)
from prvr.io import check_writable, write_json_atomic
from prvr.models.base import PRVRModel, VideoRepr
from prvr.models.checkpoint import load_checkpoint


def split_videos(layout: DatasetLayout, split: str) -> SplitIndex:
    """The videos of a caption split, or with split 'all' every video with features (captioned or not)."""
    if split == "all":
        return SplitIndex([], open_video_features(layout).keys(), [])
    return SplitIndex.from_layout(layout, split)


def per_video_tokens(model: PRVRModel, videos: VideoRepr) -> dict[str, list[np.ndarray]]:
    """Per token set, one float16 (n_tokens_i, D) array per video: padding dropped, normalised when the model
    scores by max-similarity (the index then scores with plain dot products)."""
    if model.scores_by_max_similarity:
        videos = videos.normalize()
    out: dict[str, list[np.ndarray]] = {}
    for name, s in videos.sets.items():
        tokens = s.tokens.half().cpu().numpy()  # (B, L, D)
        if s.mask is None:
            out[name] = list(tokens)
        else:
            lengths = s.mask.sum(1).long().tolist()
            out[name] = [t[:n] for t, n in zip(tokens, lengths, strict=True)]  # data assembly, not a forward pass
    return out


def nonfinite_videos(sets: dict[str, list[np.ndarray]]) -> list[int]:
    """Positions of the videos whose tokens (float16, as stored) hold NaN/Inf in any set."""
    bad: set[int] = set()
    for per_video in sets.values():
        bad.update(i for i, t in enumerate(per_video) if not np.isfinite(t).all())
    return sorted(bad)


def _check_same_weights(model: PRVRModel, out: Path, checkpoint: Path) -> None:
    """Refuse to mix two models' tokens: the checkpoint must hold exactly the weights the index was built with."""
    indexed, _, _ = load_checkpoint(out / "model.safetensors")
    ours, theirs = model.state_dict(), indexed.state_dict()
    for name, t in theirs.items():
        if name not in ours or ours[name].shape != t.shape or not torch.equal(ours[name].cpu(), t):
            raise IndexError_(f"{out}: indexed with other weights than {checkpoint} (first difference: {name}); "
                              "add with the checkpoint the index was built with, or build a new index")


def _encoders_of(layout: DatasetLayout) -> dict:
    """The encoder record `prvr extract` wrote with the features (specs, preprocessing, versions), if any."""
    import json

    from prvr.encode.extract import ENCODERS_FILE
    from prvr.errors import DataError

    path = layout.base / ENCODERS_FILE
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({e.__class__.__name__})") from None
    return {"encoders": record} if isinstance(record, dict) else {}


def build_index(checkpoint: Path, layout: DatasetLayout, split: str, out: Path, device="cpu", shard_size: int = 2048,
                batch_size: int = 32, resume: bool = True, progress: bool = True, skip_bad: bool = False,
                warn=None, media_roots: list[str] | None = None) -> dict:
    """Encode the split's videos not yet in `out` and append them. Creates the index when missing.

    Every check runs before the index is created: the checkpoint, the data's feature sizes against the model's,
    the output directory. Each video is checked as it is read (width, NaN/Inf) and its tokens before they are
    stored: a bad video is an error naming it, or with `skip_bad` left out with a warning. A fresh index whose
    build fails before its first shard is removed. The media roots recorded with the data (`prvr extract`) and
    `media_roots` are recorded in the manifest: `prvr serve` sends video files from under them only."""
    out = Path(out)
    warn = warn or (lambda msg: None)
    model, cfg, _ = load_checkpoint(checkpoint, device)
    mc = cfg.model
    index = split_videos(layout, split)
    if not index.video_ids:
        raise IndexError_(f"{layout.feature_dir}: no videos to index in split {split!r}")
    check_dims(layout, index, mc.visual_dim, mc.text_dim, f"checkpoint {checkpoint}")
    info = read_video_info(layout)
    text_encoder = read_text_encoder(layout)
    roots = sorted(set(read_media_roots(layout)) | {str(Path(r).resolve()) for r in media_roots or []})
    check_writable(out, "index directory", directory=True)
    exists = (out / "manifest.json").exists()
    if exists:
        if not resume:
            raise IndexError_(f"{out}: an index exists already (use `prvr index add` to extend it)")
        manifest = read_manifest(out)
        if manifest["config"]["model"] != cfg.to_dict()["model"]:
            raise IndexError_(f"{out}: indexed with a different model than {checkpoint}")
        _check_same_weights(model, out, checkpoint)
    if skip_bad:
        index = screen_split(layout, index, mc.visual_dim, None, True, warn, queries=False)
    dist.barrier()  # every rank has checked the output before rank 0 creates it
    created = not out.exists()
    try:
        if not exists and dist.is_main():
            manifest = create_index(out, checkpoint, cfg.to_dict(), model.token_layouts(), model.score_weights(),
                                    model.scores_by_max_similarity, text_encoder, extra=_encoders_of(layout))
        if dist.sharded():
            return _sharded_build(model, layout, split, index, info, roots, out, device, shard_size, batch_size,
                                  progress, skip_bad, warn)
        return _encode_and_append(model, manifest, layout, split, index, info, roots, out, device, shard_size,
                                  batch_size, progress, skip_bad, warn)
    except BaseException:
        if not exists and dist.is_main():  # a fresh index that got no shard is not left behind
            discard_empty_index(out, created)
        raise


def _todo(manifest: dict, index: SplitIndex, out: Path) -> list[int]:
    """Positions of the split's videos not in the index yet."""
    done = {v for name in manifest["shards"] for v in load_shard(out / name, list(manifest["token_sets"])).ids}
    return [i for i, v in enumerate(index.video_ids) if v not in done]


def _with_roots(manifest: dict, roots: list[str], out: Path) -> dict:
    if set(roots) - set(manifest.get("media_roots") or []):
        manifest = {**manifest, "media_roots": sorted(set(manifest.get("media_roots") or []) | set(roots))}
        write_json_atomic(out / "manifest.json", manifest)
    return manifest


def _sharded_build(model: PRVRModel, layout: DatasetLayout, split: str, index: SplitIndex, info: dict,
                   roots: list[str], out: Path, device, shard_size: int, batch_size: int, progress: bool,
                   skip_bad: bool, warn) -> dict:
    """This rank's share of the videos to do, in its own shards; rank 0 lists every rank's shards last."""
    dist.barrier()  # rank 0 has created the index
    manifest = read_manifest(out)
    todo = _todo(manifest, index, out)
    first = len(manifest["shards"])
    lo, hi = dist.shard_range(len(todo), align=batch_size if -(-len(todo) // batch_size) >= dist.world() else 1)
    written: list[tuple[str, int]] = []

    def write(ids, sets, meta):
        name = f"shard-{first:05d}-r{dist.rank():03d}-{len(written):05d}"
        write_shard(out, name, ids, sets, meta)
        written.append((name, len(ids)))

    _encode(model, layout, split, index, info, todo[lo:hi], device, shard_size, batch_size,
            progress and dist.is_main(), skip_bad, warn, write)
    per_rank = dist.all_gather_object(written)
    if dist.is_main():
        manifest = _with_roots(read_manifest(out), roots, out)
        new = [entry for entries in per_rank for entry in entries]
        manifest = {**manifest, "shards": manifest["shards"] + [n for n, _ in new],
                    "n_videos": manifest["n_videos"] + sum(c for _, c in new)}
        write_json_atomic(out / "manifest.json", manifest)
    dist.barrier()  # the manifest is written when any rank returns
    return read_manifest(out)


def _encode_and_append(model: PRVRModel, manifest: dict, layout: DatasetLayout, split: str, index: SplitIndex,
                       info: dict, roots: list[str], out: Path, device, shard_size: int, batch_size: int,
                       progress: bool, skip_bad: bool, warn) -> dict:
    todo = _todo(manifest, index, out)
    manifest = _with_roots(manifest, roots, out)
    box = [manifest]

    def append(ids, sets, meta):
        box[0] = append_shard(out, box[0], ids, sets, meta)

    _encode(model, layout, split, index, info, todo, device, shard_size, batch_size, progress, skip_bad, warn, append)
    return box[0]


def _encode(model: PRVRModel, layout: DatasetLayout, split: str, index: SplitIndex, info: dict, todo: list[int],
            device, shard_size: int, batch_size: int, progress: bool, skip_bad: bool, warn, store) -> None:
    """Encode the videos at positions `todo`, `shard_size` at a time; store(ids, sets, meta) each shard."""
    mc = model.cfg
    dataset = EvalVideos(layout, split, mc.map_size, mc.max_ctx_l, mc.max_desc_l, index=index,
                         visual_dim=mc.visual_dim, text_dim=mc.text_dim)
    bar = tqdm(total=len(todo), desc="index", unit="video", disable=not progress)
    for start in range(0, len(todo), shard_size):
        part = todo[start:start + shard_size]
        loader = DataLoader(Subset(dataset, part), batch_size=batch_size, collate_fn=collate_videos)
        sets: dict[str, list[np.ndarray]] = {name: [] for name in model.token_layouts()}
        with torch.no_grad():
            for batch in loader:
                for name, tokens in per_video_tokens(model, model.encode_videos(batch.to(device))).items():
                    sets[name].extend(tokens)
                bar.update(len(batch.clip))
        ids = [index.video_ids[i] for i in part]
        bad = nonfinite_videos(sets)
        if bad and not skip_bad:
            raise NonFiniteError(f"video {ids[bad[0]]!r}: the model's tokens are NaN or Inf ({len(bad)} such videos "
                                 "in this shard); nothing of it was stored (pass --skip-bad to leave them out)")
        for i in bad:
            warn(f"skipped: video {ids[i]!r}: the model's tokens are NaN or Inf")
        keep = [i for i in range(len(ids)) if i not in set(bad)]
        if not keep:
            continue
        ids = [ids[i] for i in keep]
        sets = {name: [per_video[i] for i in keep] for name, per_video in sets.items()}
        meta = [{"n_raw_frames": dataset.videos.length(v), **info.get(v, {})} for v in ids]
        store(ids, sets, meta)
    bar.close()
