"""Evaluation: encode every video of a split once, every query once, score in query chunks, rank.
Works for any registered model through the contract (`encode_videos`, `encode_queries`, `score`).

Under torchrun (`prvr.dist`) the work is sharded: each rank encodes a contiguous share of the videos (whole
batches where the split allows), the video representations are gathered on every rank, each rank ranks its share
of the queries against all of them, and the ranks (and scores) are gathered: the single process's metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from prvr import dist
from prvr.data.datasets import EvalQueries, EvalVideos, SplitIndex, collate_queries, collate_videos
from prvr.data.layout import DatasetLayout
from prvr.device import bf16_autocast
from prvr.errors import DataError, NonFiniteError
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


def video_batch(model: PRVRModel, batch_size: int) -> int:
    """Videos read (and padded) at a time for `model`: at most its `inference_videos`, when set."""
    return min(batch_size, model.inference_videos or batch_size)


@torch.no_grad()
def encode_videos(model: PRVRModel, dataset: EvalVideos, batch_size: int = 100, device="cpu", num_workers: int = 0,
                  progress: bool = False) -> VideoRepr:
    """All videos of a split, in split order, on `device`. Read in batches of at most the model's
    `inference_videos` (when set): the padded inputs then exist for so many videos, not `batch_size`."""
    loader = _loader(dataset, video_batch(model, batch_size), collate_videos, num_workers)
    return VideoRepr.collect((model.encode_videos(b.to(device))
                              for b in tqdm(loader, desc="videos", unit="batch", disable=not progress)), len(dataset))


@torch.no_grad()
def encode_queries(model: PRVRModel, dataset: EvalQueries, batch_size: int = 50, device="cpu", num_workers: int = 0,
                   progress: bool = False) -> QueryRepr:
    """All queries of a split, in caption-file order."""
    loader = _loader(dataset, batch_size, collate_queries, num_workers)
    return QueryRepr.cat([model.encode_queries(b.to(device))
                          for b in tqdm(loader, desc="queries", unit="batch", disable=not progress)])


@torch.no_grad()
def rank_queries(model: PRVRModel, queries: QueryRepr, videos: VideoRepr, gt: torch.Tensor, chunk: int = 1024,
                 keep_scores: bool = False, query_ids: list[str] | None = None,
                 video_ids: list[str] | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """Score queries against all videos in chunks of queries; ranks (N,) and optionally the full matrix.
    A NaN/Inf score is refused (NonFiniteError naming the query and video): a NaN would rank first."""
    ranks, kept = [torch.zeros(0, dtype=torch.long, device=queries.vectors.device)], []
    queries = queries.normalize()  # once, not per chunk; the videos are normalised block by block as they are
    # scored (`max_similarity_scores`): a normalised copy of every video token would be held beside them
    for start in range(0, len(queries), chunk):
        s = model.score(queries[start:start + chunk], videos)  # (chunk, V)
        _check_finite_scores(s, start, query_ids, video_ids)
        ranks.append(ranks_from_scores(s, gt[start:start + chunk]))
        if keep_scores:
            kept.append(s.float().cpu().numpy())
    if keep_scores and not kept:  # no queries (an empty share of a sharded evaluation)
        kept = [np.zeros((0, len(videos)), np.float32)]
    return torch.cat(ranks).cpu(), (np.concatenate(kept) if keep_scores else None)


def _check_finite_scores(s: torch.Tensor, start: int, query_ids: list[str] | None,
                         video_ids: list[str] | None) -> None:
    bad = ~torch.isfinite(s)
    if not bad.any():
        return
    q, v = (int(i) for i in bad.nonzero()[0])
    qid = query_ids[start + q] if query_ids else f"#{start + q}"
    vid = video_ids[v] if video_ids else f"#{v}"
    raise NonFiniteError(f"{int(bad.sum())} non-finite scores, e.g. query {qid!r} against video {vid!r} is "
                         f"{float(s[q, v])}: the model's weights or outputs are not finite; nothing was ranked")


def evaluate(model: PRVRModel, layout: DatasetLayout, split: str, batch_videos: int = 100, batch_queries: int = 50,
             device="cpu", keep_scores: bool = False, progress: bool = False, num_workers: int = 0,
             amp: bool = False, index: SplitIndex | None = None) -> EvalResult:
    """Encode every video and query of a split, score and rank. `amp`: encode under bf16 autocast (faster on
    CPUs with bf16 matrix units and on GPUs; scores then differ from fp32 in the third decimal); scoring stays fp32.
    `index`: the split's queries and videos (default: read from its caption file; `screen_split` makes one that
    leaves bad items out). Every video and caption is checked as it is read (width, NaN/Inf)."""
    cfg = model.cfg
    index = index or SplitIndex.from_layout(layout, split)
    if not index.query_ids:
        raise DataError(f"{layout.caption_file(split)}: no usable captions to evaluate")
    kw = dict(map_size=cfg.map_size, max_ctx_l=cfg.max_ctx_l, max_desc_l=cfg.max_desc_l, index=index,
              visual_dim=cfg.visual_dim, text_dim=cfg.text_dim)
    was_training = model.training
    model.eval()
    progress = progress and dist.is_main()
    try:
        v0, v1 = share_of(len(index.video_ids), batch_videos)
        q0, q1 = share_of(len(index.query_ids), batch_queries)
        with bf16_autocast(device, amp):
            videos = _encode_share(encode_videos, model, EvalVideos(layout, split, **kw), v0, v1, batch_videos,
                                   device, num_workers, progress)
            queries = _encode_share(encode_queries, model, EvalQueries(layout, split, **kw), q0, q1, batch_queries,
                                    device, num_workers, progress)
        if amp:
            videos, queries = videos.map(lambda t: t.float()), queries.map(lambda t: t.float())
        videos = videos.map(dist.gather_cat)  # every rank: all videos, in split order
        gt = torch.tensor(index.labels[q0:q1], device=queries.vectors.device)
        ranks, scores = rank_queries(model, queries, videos, gt, keep_scores=keep_scores,
                                     query_ids=index.query_ids[q0:q1], video_ids=index.video_ids)
        if dist.sharded():
            dev = videos.sets[next(iter(videos.sets))].tokens.device
            ranks = dist.gather_cat(ranks.to(dev)).cpu()
            if keep_scores:
                scores = dist.gather_cat(torch.from_numpy(scores).to(dev)).cpu().numpy()
    finally:
        model.train(was_training)
    return EvalResult(recalls(ranks), ranks, scores, index.query_ids, index.video_ids)


def share_of(n: int, batch: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of n items (all of them in one process): whole batches of the
    single process when every rank gets one, else an even split."""
    if not dist.sharded():
        return 0, n
    return dist.shard_range(n, align=batch if -(-n // batch) >= dist.world() else 1)


def _encode_share(encode, model, dataset, start: int, stop: int, batch: int, device, num_workers: int, progress: bool):
    """encode(model, items start..stop of dataset); an empty share encodes one item and keeps none of it (the
    gather needs this rank's shapes)."""
    if (start, stop) == (0, len(dataset)):
        return encode(model, dataset, batch, device, num_workers, progress)
    part = Subset(dataset, range(start, stop) if stop > start else range(min(1, len(dataset))))
    out = encode(model, part, batch, device, num_workers, progress)
    return out if stop > start else out.map(lambda t: t[:0])


def save_scores(path: str | Path, scores: np.ndarray) -> None:
    """Write the (queries x videos) matrix as .npy, atomically."""
    from prvr.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, scores.astype(np.float32))
