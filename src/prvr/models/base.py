"""The contract every prvr model meets, and the representations it exchanges with the rest of the system.

Callers (trainer, evaluator, index build, search, serve) rely on this module and on the registry, never on a
particular model:

- `Model(cfg)`: built from its own typed config (a `prvr.config.ModelConfig` subclass).
- `encode_videos(batch) -> VideoRepr`: query-independent, what an index stores: named token sets (clip
  cells, frames, clip proposals, ...), each described by a `TokenLayout` that maps a token to a time span.
- `encode_queries(batch) -> QueryRepr`: per query one or several weighted vectors, each aimed at a token set.
- `score(queries, videos) -> (N, B)`; by default the weighted max-similarity
  score = sum_s w_s * sum_{rows m aimed at s} a_m * max_l cos(q_m, token_{s,l}), which the index reproduces by
  scaling each query row by w_s * a_m. A model whose score is not of that form overrides `score` and sets
  `scores_by_max_similarity = False`; the index then scores it exactly through `score`.
- `best_tokens(queries, videos)`: per token set, the token behind the score (the moment of a hit).
- `forward_train(batch) -> outputs`, turned into named loss terms by the model's loss (`ModelLoss`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prvr.config import LossConfig, ModelConfig
from prvr.data.preprocess import cell_bounds

NEG_INF = float("-inf")
SCORE_BLOCK = 1 << 24  # cosines held at once by `max_similarity_scores` (N x M x videos x L): 64 MB of float32


# ------------------------------------------------------------------------------------------------ time spans
@lru_cache(maxsize=4096)
def _spans(layout: TokenLayout, n_raw: int) -> np.ndarray:
    if layout.ragged and n_raw <= layout.cells:
        lo = np.arange(n_raw)
        out = np.stack([lo, lo + 1], axis=1)
    else:
        b = cell_bounds(n_raw, layout.cells)
        if layout.proposals is not None:
            first, last = np.asarray(layout.proposals).T
            lo, hi = b[first], b[last]
        else:
            lo, hi = b[:-1], b[1:]
        out = np.stack([lo, np.where(hi > lo, hi, lo + 1)], axis=1)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of one set lie in time.

    `cells`: the size of the grid laid over a video's n raw frames (32 clip cells, 128 frame slots).
    `ragged`: tokens are the frame sequence: one token per raw frame while n <= cells, pooled cells beyond, and
    a video has min(n, cells) of them; otherwise every video has one token per grid cell (or per proposal).
    `proposals`: token i covers grid cells [a_i, b_i) (e.g. MS-SL's multi-scale clips); None: token i is cell i.
    `pads_score_zero`: a video with fewer tokens than `cells` also scores 0 in the max (the zeroed padding of
    the original implementations enters their max); otherwise padding never scores.
    """

    cells: int
    ragged: bool = False
    proposals: tuple[tuple[int, int], ...] | None = None
    pads_score_zero: bool = False

    @property
    def capacity(self) -> int:
        return len(self.proposals) if self.proposals is not None else self.cells

    def frame_rows(self, n_raw: int, token: int) -> tuple[int, int]:
        """Raw frame rows [lo, hi) that token `token` covers in a video of n_raw frames."""
        lo, hi = self.spans(n_raw)[token]
        return int(lo), int(hi)

    def spans(self, n_raw: int) -> np.ndarray:
        """(T, 2) raw frame rows [lo, hi) of every token of a video of n_raw frames (a cell whose rows are
        degenerate covers its first row); read-only, computed once per layout and length."""
        return _spans(self, n_raw)

    def to_dict(self) -> dict[str, Any]:
        return {"cells": self.cells, "ragged": self.ragged, "pads_score_zero": self.pads_score_zero,
                "proposals": None if self.proposals is None else [list(p) for p in self.proposals]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenLayout:
        props = d.get("proposals")
        return cls(int(d["cells"]), bool(d.get("ragged", False)),
                   None if props is None else tuple((int(a), int(b)) for a, b in props),
                   bool(d.get("pads_score_zero", False)))


# ------------------------------------------------------------------------------------------------ representations
@dataclass
class TokenSet:
    tokens: torch.Tensor  # (B, L, D)
    mask: torch.Tensor | None = None  # (B, L), 1 = a real token; None: every position is real


@dataclass
class VideoRepr:
    """Query-independent video representation: named token sets, in the model's `token_layouts()` order."""

    sets: dict[str, TokenSet]
    normalized: bool = False

    def __len__(self) -> int:
        return next(iter(self.sets.values())).tokens.shape[0]

    def map(self, fn) -> VideoRepr:
        """Apply fn to every tensor (tokens and masks)."""
        return VideoRepr({k: TokenSet(fn(s.tokens), None if s.mask is None else fn(s.mask))
                          for k, s in self.sets.items()}, self.normalized)

    def normalize(self) -> VideoRepr:
        if self.normalized:
            return self
        return VideoRepr({k: TokenSet(F.normalize(s.tokens, dim=-1), s.mask) for k, s in self.sets.items()}, True)

    @staticmethod
    def collect(parts: Iterator[VideoRepr], total: int) -> VideoRepr:
        """`cat` of parts as they come, into tensors of `total` videos allocated at the first part: the parts (each
        free once copied) and the whole never exist side by side, as they do with a list and `cat`."""
        out, at = None, 0
        for part in parts:
            if out is None:
                out = part.map(lambda t: t.new_empty((total, *t.shape[1:])))
            n = len(part)
            if at + n > total:
                raise ValueError(f"expected {total} videos, got more")
            for name, s in part.sets.items():
                o = out.sets[name]
                if s.tokens.shape[1:] != o.tokens.shape[1:]:
                    raise ValueError(f"token set {name!r}: part of shape {tuple(s.tokens.shape)} after "
                                     f"{tuple(o.tokens.shape[1:])}; cannot be concatenated")
                o.tokens[at:at + n] = s.tokens  # (n, L, D)
                if s.mask is not None:
                    o.mask[at:at + n] = s.mask
            at += n
        if out is None or at != total:
            raise ValueError(f"expected {total} videos, got {at}")
        return out

    @staticmethod
    def cat(parts: Sequence[VideoRepr]) -> VideoRepr:
        first = parts[0]
        return VideoRepr({k: TokenSet(torch.cat([p.sets[k].tokens for p in parts]),
                                      None if s.mask is None else torch.cat([p.sets[k].mask for p in parts]))
                          for k, s in first.sets.items()}, first.normalized)


@dataclass
class QueryRepr:
    """Per query M weighted vectors; row m is scored against token set `targets[m]` with weight a_m >= 0."""

    vectors: torch.Tensor  # (N, M, D)
    weights: torch.Tensor  # (N, M), 0 for padding rows
    targets: tuple[str, ...]  # (M,)
    normalized: bool = False

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def __getitem__(self, rows: slice) -> QueryRepr:
        return replace(self, vectors=self.vectors[rows], weights=self.weights[rows])

    def map(self, fn) -> QueryRepr:
        return replace(self, vectors=fn(self.vectors), weights=fn(self.weights))

    def normalize(self) -> QueryRepr:
        return self if self.normalized else replace(self, vectors=F.normalize(self.vectors, dim=-1), normalized=True)

    def rows_for(self, target: str) -> list[int]:
        return [m for m, t in enumerate(self.targets) if t == target]

    @staticmethod
    def single(query: torch.Tensor, targets: Sequence[str]) -> QueryRepr:
        """One vector per query (N, D), used against every token set in `targets`."""
        N = query.shape[0]
        return QueryRepr(query[:, None].expand(N, len(targets), query.shape[-1]), query.new_ones(N, len(targets)),
                         tuple(targets))

    @staticmethod
    def cat(parts: Sequence[QueryRepr]) -> QueryRepr:
        """Concatenate over queries; rows are padded to the longest part with zero-weight rows."""
        M = max(p.vectors.shape[1] for p in parts)
        longest = max(parts, key=lambda p: p.vectors.shape[1])

        def pad(p: QueryRepr) -> QueryRepr:
            extra = M - p.vectors.shape[1]
            if extra == 0:
                return p
            if p.targets != longest.targets[:len(p.targets)]:
                raise ValueError("query parts with different row targets cannot be concatenated")
            return replace(p, vectors=F.pad(p.vectors, (0, 0, 0, extra)), weights=F.pad(p.weights, (0, extra)),
                           targets=longest.targets)

        parts = [pad(p) for p in parts]
        return replace(parts[0], vectors=torch.cat([p.vectors for p in parts]),
                       weights=torch.cat([p.weights for p in parts]))


# ------------------------------------------------------------------------------------------------ scoring
def set_similarities(queries: QueryRepr, tokens: TokenSet, layout: TokenLayout, rows: list[int]) -> torch.Tensor:
    """cos of the given query rows against every token of one set: (N, M_s, B, L); padding masked per layout."""
    sims = torch.einsum("nmd,bld->nmbl", queries.vectors[:, rows], tokens.tokens)
    if tokens.mask is not None and not layout.pads_score_zero:
        sims = sims.masked_fill(tokens.mask[None, None] == 0, NEG_INF)
    return sims


def pad_frames(frames: torch.Tensor, frame_mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """frames (B, F, Dv), frame_mask (B, F) -> zero-padded to `length` positions, (B, length, Dv), (B, length)."""
    n = frames.shape[1]
    if n > length:
        raise ValueError(f"{n} frames exceed max_ctx_l={length}; sample frames first (prvr.data.frame_sequence)")
    if n < length:
        frames = F.pad(frames, (0, 0, 0, length - n))
        frame_mask = F.pad(frame_mask, (0, length - n))
    return frames, frame_mask


def max_similarity_scores(queries: QueryRepr, videos: VideoRepr, layouts: dict[str, TokenLayout]
                          ) -> dict[str, torch.Tensor]:
    """Per token set s: sum over the rows aimed at s of a_m * max_l cos(q_m, token_{s,l}) -> (N, B) each.
    In blocks of videos, each normalised as it is scored: the (N, M_s, B, L) cosines and the normalised tokens
    exist for at most SCORE_BLOCK cosines' worth of videos at a time (1,024 queries x 1,334 videos x 128 frames
    would be 700 MB at once); each video's scores are computed alone, so the blocks change nothing."""
    q = queries.normalize()
    longest = max(s.tokens.shape[1] for s in videos.sets.values())
    per = max(1, SCORE_BLOCK // max(1, q.vectors.shape[0] * q.vectors.shape[1] * longest))
    if per >= len(videos):
        return _max_similarity_block(q, videos.normalize(), layouts)
    parts = [_max_similarity_block(q, videos.map(lambda t, a=a: t[a:a + per]).normalize(), layouts)
             for a in range(0, len(videos), per)]
    return {name: torch.cat([p[name] for p in parts], dim=1) for name in layouts}


def _max_similarity_block(q: QueryRepr, v: VideoRepr, layouts: dict[str, TokenLayout]) -> dict[str, torch.Tensor]:
    """`max_similarity_scores` of normalised queries against one block of normalised videos -> (N, b) each."""
    out = {}
    for name, layout in layouts.items():
        rows = q.rows_for(name)
        best = set_similarities(q, v.sets[name], layout, rows).amax(dim=-1)  # (N, M_s, B)
        out[name] = torch.einsum("nmb,nm->nb", best, q.weights[:, rows])
    return out


# ------------------------------------------------------------------------------------------------ the contract
class PRVRModel(nn.Module):
    """Base class of every registered model. Subclasses implement the abstract methods below."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    scores_by_max_similarity: ClassVar[bool] = True
    # training keeps freed memory in the heap for the next step (`prvr.runtime.tune_allocator`: faster); False: the
    # entry points give it back (`release_freed_memory`), for a model whose step fragments that heap
    training_keeps_freed_memory: ClassVar[bool] = True
    # > 0: evaluation encodes so many videos at a time (`encode_videos` without autograd) and reads its inputs in
    # batches of at most so many (padded inputs and activations then exist for that many; results unchanged)
    inference_videos: ClassVar[int] = 0

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    # --- what the index stores and how it is scored
    def token_layouts(self) -> dict[str, TokenLayout]:
        raise NotImplementedError

    def score_weights(self) -> dict[str, float]:
        """w_s per token set (non-negative)."""
        raise NotImplementedError

    # --- inference
    def encode_videos(self, batch) -> VideoRepr:
        """batch: a `prvr.data.datasets.Batch` with clip (B, Kc, Dv), frames (B, F, Dv), frame_mask (B, F)."""
        raise NotImplementedError

    def encode_queries(self, batch) -> QueryRepr:
        """batch: a `Batch` with text (N, Lq, Dq) and text_mask (N, Lq)."""
        raise NotImplementedError

    def set_scores(self, queries: QueryRepr, videos: VideoRepr) -> dict[str, torch.Tensor]:
        """Per token set, its unweighted score (N, B)."""
        return max_similarity_scores(queries, videos, self.token_layouts())

    def score(self, queries: QueryRepr, videos: VideoRepr) -> torch.Tensor:
        """The retrieval score (N, B)."""
        per_set = self.set_scores(queries, videos)
        return sum(w * per_set[name] for name, w in self.score_weights().items())

    def best_tokens(self, queries: QueryRepr, videos: VideoRepr) -> dict[str, torch.Tensor]:
        """Per token set, the index of the token that decides its score, (N, B): the moment of a hit. With several
        rows aimed at a set, the token of the row that contributes most."""
        q, v = queries.normalize(), videos.normalize()
        out = {}
        for name, layout in self.token_layouts().items():
            rows = q.rows_for(name)
            best, arg = set_similarities(q, v.sets[name], layout, rows).max(dim=-1)  # (N, M_s, B)
            top = (best * q.weights[:, rows, None]).argmax(dim=1, keepdim=True)  # (N, 1, B)
            out[name] = arg.gather(1, top).squeeze(1)
        return out

    # --- training
    def forward_train(self, batch, draws: dict[str, torch.Tensor] | None = None) -> Any:
        """All tensors the model's loss needs, for a `Batch` with video and query fields and labels. `draws`:
        recorded random draws to use instead of drawing (see `TrainStep.draws`); a model ignores names it does
        not draw. Random tensors drawn per video or per query come from `per_item_normal` (so distributed
        training draws what one process would). For distributed training the outputs are a dataclass whose
        `batch_dims` (a ClassVar) names every tensor field with its kind and batch dimension, e.g.
        {"query": ("queries", 0), "eps_pred": ("videos", 1)}: those are gathered across processes, with
        gradient, before the loss (`prvr.train.distributed.gather_outputs`)."""
        raise NotImplementedError

    def set_recompute(self, videos: int) -> None:
        """Optionally trade compute for memory in training (recompute activations in backward, `videos` at a
        time; 0: keep them). Results must not change. The default keeps everything."""


@dataclass
class BatchShare:
    """A process's share of a global training batch: its videos are rows [video_start, video_start + B_local) of
    the global batch's `videos`, its queries rows [query_start, ...) of `queries`; `generator` is seeded alike in
    every process. Random tensors drawn per video/query for the global batch and sliced to the share are what a
    single process with the whole batch and that generator draws."""

    generator: torch.Generator | None = None
    video_start: int = 0
    videos: int | None = None  # global batch size; None: this process holds the whole batch
    query_start: int = 0
    queries: int | None = None


_share: ContextVar[BatchShare | None] = ContextVar("prvr_batch_share", default=None)


@contextmanager
def sharing(share: BatchShare | None) -> Iterator[None]:
    """Draw per-item random tensors of the enclosed training forward for `share` (None: the global RNG)."""
    token = _share.set(share)
    try:
        yield
    finally:
        _share.reset(token)


def per_item_normal(kind: str, n: int, *rest: int, device=None, dtype=None) -> torch.Tensor:
    """(n, *rest) standard normal draws for the n local videos (kind "videos") or queries ("queries") of a
    training batch. Under `sharing(share)`: drawn for the global batch from the share's generator, this
    process's rows kept; otherwise from the global RNG."""
    share = _share.get()
    if share is None:
        return torch.randn((n, *rest), device=device, dtype=dtype)
    total, start = (share.videos, share.video_start) if kind == "videos" else (share.queries, share.query_start)
    total = n if total is None else total
    full = torch.randn((total, *rest), device=device, dtype=dtype, generator=share.generator)
    return full[start:start + n]


@dataclass
class TrainStep:
    """What a loss may know about the step it is computed in.

    `draws`: optional recorded random draws, used instead of drawing, so a test can feed the original
    implementation's draws and compare a training step by value (None in training: nothing changes, nothing is
    paid). Names: `perturbation_alpha`, `perturbation_beta` (B, K, D) (textual perturbation); `<set>_t2v` (N,)
    and `<set>_v2t` (B,) (triplet negatives as positions in the sorted scores, see `losses.triplet_ranking`).
    """

    epoch: int = 0
    hard_negative: bool = False
    generator: torch.Generator | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    draws: dict[str, torch.Tensor] | None = None


class ModelLoss:
    """A model's loss: named, unweighted terms and their weighted total."""

    config_class: ClassVar[type[LossConfig]] = LossConfig

    def __init__(self, cfg: LossConfig, model_cfg: ModelConfig):
        self.cfg, self.model_cfg = cfg, model_cfg

    def __call__(self, outputs: Any, labels: torch.Tensor, step: TrainStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (weighted total, {term: unweighted value, detached})."""
        raise NotImplementedError
