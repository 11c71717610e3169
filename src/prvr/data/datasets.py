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
    """`visual_dim`/`text_dim` (the model's input sizes) are checked on every item read, with finiteness: a
    video or caption of the wrong width, empty, or holding NaN/Inf is refused naming its file and id."""

    def __init__(self, layout: DatasetLayout, split: str, map_size: int = 32, max_ctx_l: int = 128,
                 max_desc_l: int = 30, index: SplitIndex | None = None, visual_dim: int | None = None,
                 text_dim: int | None = None):
        self.layout, self.split = layout, split
        self.index = index or SplitIndex.from_layout(layout, split)
        self.map_size, self.max_ctx_l, self.max_desc_l = map_size, max_ctx_l, max_desc_l
        self.visual_dim, self.text_dim = visual_dim, text_dim
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

    def raw_video(self, vid: str) -> np.ndarray:
        raw = self.videos.get(vid)
        problem = matrix_problem(raw, self.visual_dim)
        if problem:
            raise DataError(f"{_where(self.videos)}: video {vid!r} {problem}{SKIP_HINT}")
        return raw

    def raw_query(self, qid: str) -> np.ndarray:
        raw = self.queries.get(qid)
        problem = matrix_problem(raw, self.text_dim)
        if problem:
            raise DataError(f"{self.queries.path}: caption {qid!r} {problem}{SKIP_HINT}")
        return raw

    def video_inputs(self, vi: int) -> tuple[np.ndarray, np.ndarray]:
        raw = self.raw_video(self.index.video_ids[vi])
        return clip_grid(raw, self.map_size), frame_sequence(raw, self.max_ctx_l)

    def query_input(self, qi: int) -> np.ndarray:
        return query_tokens(self.raw_query(self.index.query_ids[qi]), self.max_desc_l)


SKIP_HINT = " (fix the data, or pass --skip-bad to leave such items out)"


def _where(store) -> str:
    return str(getattr(store, "path", store))


def matrix_problem(arr: np.ndarray, dim: int | None) -> str | None:
    """Why a (n, dim) feature matrix cannot be used (None if it can): empty, wrong width, NaN/Inf."""
    if arr.ndim != 2:
        return f"has shape {arr.shape}, expected (n, dim)"
    if arr.shape[0] == 0:
        return "is empty (0 rows)"
    if dim is not None and arr.shape[1] != dim:
        return f"has dim {arr.shape[1]}, expected {dim}"
    if not np.isfinite(arr).all():
        return "contains NaN or Inf"
    return None


def probe_dims(layout: DatasetLayout, index: SplitIndex) -> tuple[int | None, int | None]:
    """The data's visual and text feature sizes, read from the first video and caption of a split (no rows read)."""
    vdim = tdim = None
    if index.video_ids:
        vdim = open_video_features(layout).dim(index.video_ids[0])
    if index.query_ids:
        tdim = open_query_features(layout).dim(index.query_ids[0])
    return vdim, tdim


def check_dims(layout: DatasetLayout, index: SplitIndex, visual_dim: int, text_dim: int, source: str) -> None:
    """Before any work: the model's input sizes (from `source`, e.g. "the preset" or a checkpoint) must be the
    data's, or every batch would fail."""
    vdim, tdim = probe_dims(layout, index)
    for what, data_dim, model_dim, key, file in (
            ("video features", vdim, visual_dim, "model.visual_dim", _where(open_video_features(layout))),
            ("caption token features", tdim, text_dim, "model.text_dim", layout.query_feature_file)):
        if data_dim is not None and data_dim != model_dim:
            raise DataError(f"{file}: {what} are {data_dim}-d but {source} has {key}={model_dim} "
                            f"(expected them equal: choose matching data, or set --set {key}={data_dim} when training)")


def screen_split(layout: DatasetLayout, index: SplitIndex, visual_dim: int | None, text_dim: int | None,
                 skip_bad: bool, warn=None, videos: bool = True, queries: bool = True) -> SplitIndex:
    """Read every video and caption of a split once and check it (`matrix_problem`). With skip_bad, bad videos
    (with their captions) and bad captions are left out, each with a warning; otherwise the first one is an
    error naming its file and id."""
    probe = _SplitData(layout, "", index=index, visual_dim=visual_dim, text_dim=text_dim)
    bad_videos: set[int] = set()
    bad_queries: set[int] = set()
    for _kind, ids, read, bad in (("video", index.video_ids if videos else [], probe.raw_video, bad_videos),
                                 ("caption", index.query_ids if queries else [], probe.raw_query, bad_queries)):
        for i, item in enumerate(ids):
            try:
                read(item)
            except DataError as e:
                if not skip_bad:
                    raise
                bad.add(i)
                if warn is not None:
                    warn(f"skipped: {str(e).removesuffix(SKIP_HINT)}")
    if not bad_videos and not bad_queries:
        return index
    keep_v = [i for i in range(len(index.video_ids)) if i not in bad_videos]
    new_pos = {old: new for new, old in enumerate(keep_v)}
    q_ids, labels = [], []
    for qi, (qid, vi) in enumerate(zip(index.query_ids, index.labels, strict=True)):
        if qi in bad_queries or vi in bad_videos:
            continue
        q_ids.append(qid)
        labels.append(new_pos[vi])
    return SplitIndex(q_ids, [index.video_ids[i] for i in keep_v], labels)


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
