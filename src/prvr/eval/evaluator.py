"""Evaluation: encode every video of a split once, every query once, score in query chunks, rank.
Works for any registered model through the contract (`encode_videos`, `encode_queries`, `score`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prvr.data.datasets import EvalQueries, EvalVideos, SplitIndex, collate_queries, collate_videos
from prvr.data.layout import DatasetLayout
from prvr.device import bf16_autocast
from prvr.eval.metrics import ranks_from_scores, recalls
from prvr.models.base import PRVRModel, QueryRepr, VideoRepr


@dataclass
class EvalResult:
    metrics: dict[str, float]
    ranks: torch.Tensor  # (N,)
    scores: np.ndarray | None  # (N, V) when kept
    query_ids: list[str]
    video_ids: list[str]


def _loader(dataset, batch_size: int, collate, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


@torch.no_grad()
def encode_videos(model: PRVRModel, dataset: EvalVideos, batch_size: int = 100, device="cpu", num_workers: int = 0,
                  progress: bool = False) -> VideoRepr:
    """All videos of a split, in split order, on `device`."""
    loader = _loader(dataset, batch_size, collate_videos, num_workers)
    return VideoRepr.cat([model.encode_videos(b.to(device))
                          for b in tqdm(loader, desc="videos", unit="batch", disable=not progress)])


@torch.no_grad()
def encode_queries(model: PRVRModel, dataset: EvalQueries, batch_size: int = 50, device="cpu", num_workers: int = 0,
                   progress: bool = False) -> QueryRepr:
    """All queries of a split, in caption-file order."""
    loader = _loader(dataset, batch_size, collate_queries, num_workers)
    return QueryRepr.cat([model.encode_queries(b.to(device))
                          for b in tqdm(loader, desc="queries", unit="batch", disable=not progress)])


@torch.no_grad()
def rank_queries(model: PRVRModel, queries: QueryRepr, videos: VideoRepr, gt: torch.Tensor, chunk: int = 1024,
                 keep_scores: bool = False) -> tuple[torch.Tensor, np.ndarray | None]:
    """Score queries against all videos in chunks of queries; ranks (N,) and optionally the full matrix."""
    ranks, kept = [], []
    videos, queries = videos.normalize(), queries.normalize()  # once, not per chunk
    for start in range(0, len(queries), chunk):
        s = model.score(queries[start:start + chunk], videos)  # (chunk, V)
        ranks.append(ranks_from_scores(s, gt[start:start + chunk]))
        if keep_scores:
            kept.append(s.float().cpu().numpy())
    return torch.cat(ranks).cpu(), (np.concatenate(kept) if keep_scores else None)


def evaluate(model: PRVRModel, layout: DatasetLayout, split: str, batch_videos: int = 100, batch_queries: int = 50,
             device="cpu", keep_scores: bool = False, progress: bool = False, num_workers: int = 0,
             amp: bool = False) -> EvalResult:
    """Encode every video and query of a split, score and rank. `amp`: encode under bf16 autocast (faster on
    CPUs with bf16 matrix units and on GPUs; scores then differ from fp32 in the third decimal); scoring stays fp32."""
    cfg = model.cfg
    index = SplitIndex.from_layout(layout, split)
    kw = dict(map_size=cfg.map_size, max_ctx_l=cfg.max_ctx_l, max_desc_l=cfg.max_desc_l, index=index)
    was_training = model.training
    model.eval()
    try:
        with bf16_autocast(device, amp):
            videos = encode_videos(model, EvalVideos(layout, split, **kw), batch_videos, device, num_workers, progress)
            queries = encode_queries(model, EvalQueries(layout, split, **kw), batch_queries, device, num_workers,
                                     progress)
        if amp:
            videos, queries = videos.map(lambda t: t.float()), queries.map(lambda t: t.float())
        gt = torch.tensor(index.labels, device=queries.vectors.device)
        ranks, scores = rank_queries(model, queries, videos, gt, keep_scores=keep_scores)
    finally:
        model.train(was_training)
    return EvalResult(recalls(ranks), ranks, scores, index.query_ids, index.video_ids)


def save_scores(path: str | Path, scores: np.ndarray) -> None:
    """Write the (queries x videos) matrix as .npy, atomically."""
    from prvr.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, scores.astype(np.float32))
