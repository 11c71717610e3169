"""Datasets and collate functions of the PRVR protocol.

Training items are videos with *all* their captions (so a video's queries share a batch); evaluation has
one dataset of videos and one of queries, in the caption file's order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import Dataset

from prvr.data.features import Hdf5Store, open_query_features, open_video_features
from prvr.data.layout import DatasetLayout, read_captions, split_index
from prvr.data.preprocess import clip_grid, frame_sequence, query_tokens
from prvr.errors import DataError


@dataclass
class SplitIndex:
    """The queries and videos of one split, in protocol order."""

    query_ids: list[str]
    video_ids: list[str]
    labels: list[int]  # video index of each query

    @classmethod
    def from_layout(cls, layout: DatasetLayout, split: str) -> SplitIndex:
        q, v, lab = split_index(read_captions(layout.caption_file(split)))
        return cls(q, v, lab)

    def queries_of_video(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.video_ids]
        for qi, vi in enumerate(self.labels):
            out[vi].append(qi)
        return out


@dataclass
class Batch:
    """Padded tensors; masks are 1 for real positions."""

    clip: torch.Tensor | None = None  # (B, Kc, Dv)
    frames: torch.Tensor | None = None  # (B, F, Dv)
    frame_mask: torch.Tensor | None = None  # (B, F)
    text: torch.Tensor | None = None  # (N, Lq, Dq)
    text_mask: torch.Tensor | None = None  # (N, Lq)
    labels: torch.Tensor | None = None  # (N,) index of each query's video in the batch

    def to(self, device: torch.device | str) -> Batch:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in kw.items()})


def pad_sequences(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (n_i, D) arrays -> zero-padded (B, max n, D) float32 and mask (B, max n)."""
    lengths = [s.shape[0] for s in seqs]
    out = np.zeros((len(seqs), max(lengths), seqs[0].shape[1]), np.float32)
    mask = np.zeros((len(seqs), max(lengths)), np.float32)
    for i, s in enumerate(seqs):  # data assembly in the loader, not a forward pass
        out[i, : lengths[i]] = s
        mask[i, : lengths[i]] = 1.0
    return torch.from_numpy(out), torch.from_numpy(mask)


class _SplitData(Dataset):
    def __init__(self, layout: DatasetLayout, split: str, map_size: int = 32, max_ctx_l: int = 128,
                 max_desc_l: int = 30, index: SplitIndex | None = None):
        self.layout, self.split = layout, split
        self.index = index or SplitIndex.from_layout(layout, split)
        self.map_size, self.max_ctx_l, self.max_desc_l = map_size, max_ctx_l, max_desc_l
        self._videos = None
        self._queries: Hdf5Store | None = None

    @property
    def videos(self):
        if self._videos is None:
            self._videos = open_video_features(self.layout)
        return self._videos

    @property
    def queries(self) -> Hdf5Store:
        if self._queries is None:
            self._queries = open_query_features(self.layout)
        return self._queries

    def video_inputs(self, vi: int) -> tuple[np.ndarray, np.ndarray]:
        vid = self.index.video_ids[vi]
        raw = self.videos.get(vid)
        if raw.shape[0] == 0:
            raise DataError(f"{self.layout.feature_dir}: video {vid!r} has no frames")
        return clip_grid(raw, self.map_size), frame_sequence(raw, self.max_ctx_l)

    def query_input(self, qi: int) -> np.ndarray:
        return query_tokens(self.queries.get(self.index.query_ids[qi]), self.max_desc_l)


class TrainVideos(_SplitData):
    """One item per video: (clip grid, frames, [query tokens...])."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.video_queries = self.index.queries_of_video()

    def __len__(self) -> int:
        return len(self.index.video_ids)

    def __getitem__(self, vi: int):
        clip, frames = self.video_inputs(vi)
        return clip, frames, [self.query_input(q) for q in self.video_queries[vi]]


class EvalVideos(_SplitData):
    def __len__(self) -> int:
        return len(self.index.video_ids)

    def __getitem__(self, vi: int):
        return self.video_inputs(vi)


class EvalQueries(_SplitData):
    def __len__(self) -> int:
        return len(self.index.query_ids)

    def __getitem__(self, qi: int):
        return self.query_input(qi)


def collate_train(items) -> Batch:
    clips, frames, queries = zip(*items, strict=True)
    frame_t, frame_mask = pad_sequences(list(frames))
    text, text_mask = pad_sequences([q for qs in queries for q in qs])
    labels = torch.tensor([b for b, qs in enumerate(queries) for _ in qs], dtype=torch.long)
    return Batch(clip=torch.from_numpy(np.stack(clips)), frames=frame_t, frame_mask=frame_mask,
                 text=text, text_mask=text_mask, labels=labels)


def collate_videos(items) -> Batch:
    clips, frames = zip(*items, strict=True)
    frame_t, frame_mask = pad_sequences(list(frames))
    return Batch(clip=torch.from_numpy(np.stack(clips)), frames=frame_t, frame_mask=frame_mask)


def collate_queries(items) -> Batch:
    text, text_mask = pad_sequences(list(items))
    return Batch(text=text, text_mask=text_mask)
