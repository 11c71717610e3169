"""Build or extend an index: encode each video of a dataset split once (batched) and append shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from prvr.data.datasets import EvalVideos, SplitIndex, collate_videos
from prvr.data.features import read_video_info
from prvr.data.layout import DatasetLayout
from prvr.encode.extract import recorded_text_encoder
from prvr.index.store import IndexError_, append_shard, create_index, read_manifest
from prvr.train.checkpoint import load_checkpoint


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
    else:
        text_encoder = recorded_text_encoder(layout)
        manifest = create_index(out, checkpoint, cfg.to_dict(), text_encoder)
    done = set()
    for name in manifest["shards"]:
        done.update(json.loads((out / name / "ids.json").read_text()))
    if split == "all":  # every video with features, captions or not (e.g. after `prvr extract` without captions)
        from prvr.data.features import open_video_features

        index = SplitIndex([], open_video_features(layout).keys(), [])
    else:
        index = SplitIndex.from_layout(layout, split)
    todo = [i for i, v in enumerate(index.video_ids) if v not in done]
    info = read_video_info(layout)
    dataset = EvalVideos(layout, split, cfg.model.map_size, cfg.model.max_ctx_l, cfg.model.max_desc_l, index=index)
    raw_lengths = _raw_lengths(dataset, todo)
    bar = tqdm(total=len(todo), desc="index", unit="video", disable=not progress)
    for start in range(0, len(todo), shard_size):
        part = todo[start:start + shard_size]
        loader = DataLoader(Subset(dataset, part), batch_size=batch_size, collate_fn=collate_videos)
        clips, frames = [], []
        with torch.no_grad():
            for batch in loader:
                b = batch.to(device)
                tokens = model.encode_videos(b.clip, b.frames, b.frame_mask)
                clips.append(F.normalize(tokens.clip, dim=-1).half().cpu().numpy())
                lengths = b.frame_mask.sum(1).long().tolist()
                fr = F.normalize(tokens.frame, dim=-1).half().cpu().numpy()
                frames.extend(fr[i, :n] for i, n in enumerate(lengths))
                bar.update(len(lengths))
        ids = [index.video_ids[i] for i in part]
        meta = [{"n_raw_frames": raw_lengths[i], **info.get(index.video_ids[i], {})} for i in part]
        manifest = append_shard(out, manifest, ids, np.concatenate(clips), frames, meta)
    bar.close()
    return manifest


def _raw_lengths(dataset: EvalVideos, todo: list[int]) -> dict[int, int]:
    return {i: dataset.videos.length(dataset.index.video_ids[i]) for i in todo}


