"""Build or extend an index: encode each video of a dataset split once (batched) and append shards.
Any registered model: its `encode_videos` gives the token sets, its `token_layouts` say how to store them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from prvr.data.datasets import EvalVideos, SplitIndex, collate_videos
from prvr.data.features import open_video_features, read_text_encoder, read_video_info
from prvr.data.layout import DatasetLayout
from prvr.index.store import IndexError_, append_shard, create_index, read_manifest
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


def _check_same_weights(model: PRVRModel, out: Path, checkpoint: Path) -> None:
    """Refuse to mix two models' tokens: the checkpoint must hold exactly the weights the index was built with."""
    indexed, _, _ = load_checkpoint(out / "model.safetensors")
    ours, theirs = model.state_dict(), indexed.state_dict()
    for name, t in theirs.items():
        if name not in ours or ours[name].shape != t.shape or not torch.equal(ours[name].cpu(), t):
            raise IndexError_(f"{out}: indexed with other weights than {checkpoint} (first difference: {name}); "
                              "add with the checkpoint the index was built with, or build a new index")


def build_index(checkpoint: Path, layout: DatasetLayout, split: str, out: Path, device="cpu", shard_size: int = 2048,
                batch_size: int = 32, resume: bool = True, progress: bool = True) -> dict:
    """Encode the split's videos not yet in `out` and append them. Creates the index when missing."""
    out = Path(out)
    model, cfg, _ = load_checkpoint(checkpoint, device)
    if (out / "manifest.json").exists():
        if not resume:
            raise IndexError_(f"{out}: an index exists already (use `prvr index add` to extend it)")
        manifest = read_manifest(out)
        if manifest["config"]["model"] != cfg.to_dict()["model"]:
            raise IndexError_(f"{out}: indexed with a different model than {checkpoint}")
        _check_same_weights(model, out, checkpoint)
    else:
        manifest = create_index(out, checkpoint, cfg.to_dict(), model.token_layouts(), model.score_weights(),
                                model.scores_by_max_similarity, read_text_encoder(layout))
    done = set()
    for name in manifest["shards"]:
        done.update(json.loads((out / name / "ids.json").read_text()))
    index = split_videos(layout, split)
    todo = [i for i, v in enumerate(index.video_ids) if v not in done]
    info = read_video_info(layout)
    mc = cfg.model
    dataset = EvalVideos(layout, split, mc.map_size, mc.max_ctx_l, mc.max_desc_l, index=index)
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
        meta = [{"n_raw_frames": dataset.videos.length(v), **info.get(v, {})} for v in ids]
        manifest = append_shard(out, manifest, ids, sets, meta)
    bar.close()
    return manifest
