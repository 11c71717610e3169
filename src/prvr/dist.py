"""Several processes, one job: the process group under torchrun and the collectives prvr needs.

`torchrun --nproc-per-node N -m prvr train|eval|index build ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK and MASTER_ADDR/PORT set; `init_from_env` joins them into one group (gloo on CPU, nccl on CUDA,
one GPU per local rank). Without those variables nothing here does anything: every helper falls back to the
single process, so the same code runs both ways.

The gathers pad every rank's tensor to the largest rank along the batch dimension (ranks hold different numbers
of videos and queries), gather, and drop the padding again; `grad=True` gathers with gradient
(`torch.distributed.nn.functional.all_gather`: its backward sums, over ranks, the gradients every rank's loss
sends to a rank's rows).
"""

from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0


_current: Dist | None = None


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: torch.device | str = "cpu") -> Dist | None:
    """Join the process group torchrun describes (once); None when not launched that way. A CUDA device becomes
    this process's GPU, cuda:LOCAL_RANK. Returns the group's description."""
    global _current
    if _current is not None or not launched():
        return _current
    device = torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not tdist.is_initialized():
        tdist.init_process_group(backend, timeout=timedelta(minutes=30))
    _current = Dist(tdist.get_rank(), tdist.get_world_size(), local_rank, backend)
    atexit.register(shutdown)
    return _current


def local_device(device: torch.device | str) -> torch.device:
    """The device this process works on: cuda:LOCAL_RANK under torchrun with CUDA, else `device`."""
    device = torch.device(device)
    if _current is not None and device.type == "cuda":
        return torch.device("cuda", _current.local_rank)
    return device


def current() -> Dist | None:
    return _current


def rank() -> int:
    return 0 if _current is None else _current.rank


def world() -> int:
    return 1 if _current is None else _current.world


def is_main() -> bool:
    return rank() == 0


def sharded() -> bool:
    """More than one process shares the job."""
    return world() > 1


def barrier() -> None:
    if sharded():
        tdist.barrier()


def shutdown(sync: bool = False) -> None:
    """Leave the process group (at exit, or where a job ends). `sync`, for a normal end that every rank reaches:
    wait for the others first, so that no rank tears its connections down while another still finishes a
    collective on them. (Added after a rank aborted at exit in CI; that abort was not shown to come from this.)"""
    global _current
    if _current is not None and tdist.is_initialized():
        if sync:
            barrier()
        tdist.destroy_process_group()
    _current = None


def shard_range(n: int, rank_: int | None = None, world_: int | None = None, align: int = 1) -> tuple[int, int]:
    """Rank `rank_`'s contiguous share [start, stop) of n items: as even as possible in whole blocks of `align`
    (so batches of `align` items are the single process's batches), earlier ranks taking the remainder."""
    r, w = rank() if rank_ is None else rank_, world() if world_ is None else world_
    blocks = -(-n // align)
    lo = r * (blocks // w) + min(r, blocks % w)
    hi = lo + blocks // w + (1 if r < blocks % w else 0)
    return min(n, lo * align), min(n, hi * align)


def split_sizes(n: int, world_: int) -> list[int]:
    """n items over world_ ranks in contiguous chunks, earlier ranks one more."""
    return [n // world_ + (1 if r < n % world_ else 0) for r in range(world_)]


def broadcast_object(obj, src: int = 0):
    if not sharded():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    if not sharded():
        return [obj]
    out = [None] * world()
    tdist.all_gather_object(out, obj)
    return out


def _sizes(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world())]
    tdist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s) for s in sizes]


def all_gather_padded(t: torch.Tensor, dim: int = 0, grad: bool = False) -> list[torch.Tensor]:
    """Every rank's `t` (equal shapes but along `dim`), in rank order. grad=True: with gradient."""
    if not sharded():
        return [t]
    sizes = _sizes(t.shape[dim], t.device)
    top = max(sizes)
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [0, top - t.shape[dim]]
    padded = torch.nn.functional.pad(t, pad) if top > t.shape[dim] else t
    if grad:
        from torch.distributed.nn.functional import all_gather as all_gather_with_grad

        with warnings.catch_warnings():  # deprecated in favour of a private API; still the documented one
            warnings.simplefilter("ignore", FutureWarning)
            parts = list(all_gather_with_grad(padded.contiguous()))
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        tdist.all_gather(parts, padded.contiguous())
    return [p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)]


def gather_cat(t: torch.Tensor, dim: int = 0, grad: bool = False) -> torch.Tensor:
    """Every rank's `t` concatenated along `dim` in rank order (the single process's order when ranks hold
    contiguous shares)."""
    if not sharded():
        return t
    return torch.cat(all_gather_padded(t, dim, grad), dim=dim)
