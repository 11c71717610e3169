"""Data-parallel training over several processes (torchrun; DistributedDataParallel), exactly the single process's
training at the same global batch.

- Batches: one seeded permutation of the videos per epoch (the single process's DataLoader shuffle), cut into
  global batches of B videos; rank r takes the r-th contiguous chunk of each (`GlobalBatches`).
- Loss: every tensor the loss consumes is gathered across ranks with gradient (`gather_outputs`; the model's
  outputs declare them in `batch_dims`), labels are offset to global video indices, so every rank computes the
  loss of the whole global batch, L, the single process's loss.
- Random draws: per-video/per-query draws are made for the global batch from a generator seeded alike on every
  rank and sliced to the rank's rows (`prvr.models.base.per_item_normal`); draws on the global scores (triplet
  negatives) come from that generator too, so every rank draws the same.
- Gradients: rank r's parameters reach L only through its own rows o_r. The gather's backward sums over ranks
  the gradient each rank's loss sends to o_r; every rank computes the same L, so rank r gets R * dL/do_r and
  R * (dL/do_r)(do_r/dtheta). DDP averages over ranks: (1/R) sum_r R (dL/do_r)(do_r/dtheta) = dL/dtheta, the
  single process's gradient. Dropout differs per rank (seed + rank); with dropout off the steps are equal.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch
from torch import nn

from prvr import dist
from prvr.data.datasets import Batch
from prvr.errors import PrvrError
from prvr.models.base import BatchShare


class GlobalBatches:
    """Batch sampler: the same global batches as `DataLoader(shuffle=True, generator=seeded)` in one process (one
    `randperm` of the videos per epoch, batches of `batch` videos), each split into contiguous per-rank chunks;
    this rank's chunks. A last global batch with fewer videos than ranks is left out (a rank would hold none)."""

    def __init__(self, query_counts: list[int], batch: int, seed: int, rank: int = 0, world: int = 1):
        n = len(query_counts)
        g = torch.Generator().manual_seed(seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's base seed for workers comes first
        perm = torch.randperm(n, generator=g).tolist()
        self.batches = [perm[i:i + batch] for i in range(0, n, batch)]
        if len(self.batches[-1]) < world:
            self.dropped = len(self.batches.pop())
        else:
            self.dropped = 0
        self.query_counts, self.rank, self.world = query_counts, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def _chunk(self, step: int) -> tuple[list[int], int]:
        videos = self.batches[step]
        sizes = dist.split_sizes(len(videos), self.world)
        start = sum(sizes[:self.rank])
        return videos[start:start + sizes[self.rank]], start

    def __iter__(self):
        for step in range(len(self)):
            yield self._chunk(step)[0]

    def share(self, step: int, generator: torch.Generator | None) -> BatchShare:
        """Where this rank's videos and queries of step `step` lie in the global batch."""
        videos = self.batches[step]
        mine, start = self._chunk(step)
        q_start = sum(self.query_counts[v] for v in videos[:start])
        return BatchShare(generator, start, len(videos), q_start, sum(self.query_counts[v] for v in videos))


def local_part(batch: Batch, generator: torch.Generator | None, rank: int, world: int) -> tuple[Batch, BatchShare]:
    """Rank `rank`'s contiguous chunk of a collated global batch (its videos and their queries, labels made local)
    and where it lies in the global batch (what `GlobalBatches` hands a rank, for batches made in memory)."""
    B = len(batch.clip)
    sizes = dist.split_sizes(B, world)
    v0 = sum(sizes[:rank])
    v1 = v0 + sizes[rank]
    q0, q1 = int((batch.labels < v0).sum()), int((batch.labels < v1).sum())
    local = Batch(batch.clip[v0:v1], batch.frames[v0:v1], batch.frame_mask[v0:v1], batch.text[q0:q1],
                  batch.text_mask[q0:q1], batch.labels[q0:q1] - v0)
    return local, BatchShare(generator, v0, B, q0, len(batch.labels))


class TrainForward(nn.Module):
    """The model's training pass as `forward`, so DistributedDataParallel (which hooks `forward`) runs it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, **kw):
        return self.model.forward_train(batch, **kw)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the training pass (parameters broadcast from rank 0)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else dist.current().local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(TrainForward(model), device_ids=ids)


def gather_outputs(outputs, labels: torch.Tensor, n_videos: int):
    """The global batch's training outputs on every rank: each field of `type(outputs).batch_dims` gathered along
    its batch dimension, with gradient, in rank order; labels (N_local,) offset by the videos of earlier ranks.
    A "replicated" field (equal on every rank) stays: each rank's loss differentiates it fully and DDP's average of R
    equal gradients is that gradient. A model whose outputs mix queries and videos (an (N, B) score matrix made in
    its forward pass) cannot be gathered this way and declares no batch_dims."""
    dims = getattr(type(outputs), "batch_dims", None)
    if dims is None:
        raise PrvrError(f"{type(outputs).__name__} declares no batch_dims: the model cannot be trained on several "
                        "processes (see PRVRModel.forward_train)")
    names = {f.name for f in fields(outputs)}
    missing = names - set(dims)
    if missing:
        raise PrvrError(f"{type(outputs).__name__}.batch_dims leaves out {sorted(missing)} (every tensor field of "
                        "the training outputs must say how it is gathered)")
    new = {}
    for name, (kind, dim) in dims.items():
        v = getattr(outputs, name)
        if kind == "replicated":  # the same on every rank (e.g. a learned scalar): each rank's loss uses its own
            continue
        if kind not in ("videos", "queries"):
            raise PrvrError(f"{type(outputs).__name__}.batch_dims[{name!r}]: kind {kind!r}, expected videos, "
                            "queries or replicated")
        if torch.is_tensor(v):
            new[name] = dist.gather_cat(v, dim, grad=v.requires_grad and torch.is_grad_enabled())
    sizes = dist.gather_cat(torch.tensor([n_videos], device=labels.device))  # (world,)
    offset = int(sizes[:dist.rank()].sum())
    return replace(outputs, **new), dist.gather_cat(labels + offset)


def broadcast_decision(flag: bool) -> bool:
    """Rank 0's decision on every rank (early stopping stops every rank at once)."""
    return bool(dist.broadcast_object(bool(flag)))
