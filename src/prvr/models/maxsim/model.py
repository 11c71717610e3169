"""MaxSim: training-free partially relevant retrieval in a text-aligned space (CLIP, SigLIP, the concept bank).

A video is its clip-cell grid (32 mean-pooled cells) and its frame sequence, as given (already L2-normalised by
the data pipeline); a query is the mean of its token rows (a text-aligned encoder gives one row: the projected
text embedding). The score is the weighted max-similarity of the contract, which the index reproduces:
  clip_weight * max_cells cos(q, cell) + frame_weight * max_frames cos(q, frame).

Parameters: none when the text and visual widths are equal (the aligned case). Its only learnable value is a
temperature (`logit_scale`) used by the training loss, which never changes a ranking: `prvr train --model maxsim`
runs and writes a checkpoint, but search results are those of the untrained model. When the widths differ (e.g.
MiniLM tokens over EfficientNet features), a linear map text -> visual is added and learned: a linear-probe
baseline, the only case where training changes results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prvr.models.base import (
    PRVRModel,
    QueryRepr,
    TokenLayout,
    TokenSet,
    VideoRepr,
    max_similarity_scores,
    pad_frames,
)
from prvr.models.maxsim.config import MaxSimConfig

SETS = ("clip", "frame")


def layouts(cfg: MaxSimConfig) -> dict[str, TokenLayout]:
    return {"clip": TokenLayout(cfg.map_size), "frame": TokenLayout(cfg.max_ctx_l, ragged=True)}


@dataclass
class TrainOutputs:
    """Queries and video tokens of a training batch (per query or per video, so distributed training can gather
    them); the loss scores them (`scores`)."""

    # what distributed training gathers across processes: field -> (videos | queries | replicated, batch dimension)
    batch_dims: ClassVar[dict[str, tuple[str, int]]] = {
        "query": ("queries", 0), "clip": ("videos", 0), "frames": ("videos", 0), "frame_mask": ("videos", 0),
        "logit_scale": ("replicated", 0)}

    query: torch.Tensor  # (N, Dv) mean query, mapped to the visual width when the widths differ
    clip: torch.Tensor  # (B, Kc, Dv) clip cells
    frames: torch.Tensor  # (B, F, Dv)
    frame_mask: torch.Tensor  # (B, F)
    logit_scale: torch.Tensor  # () learned log temperature

    def scores(self, cfg: MaxSimConfig) -> torch.Tensor:
        """(N, B) weighted max-similarity, multiplied by exp(logit_scale)."""
        videos = VideoRepr({"clip": TokenSet(self.clip), "frame": TokenSet(self.frames, self.frame_mask)})
        per_set = max_similarity_scores(QueryRepr.single(self.query, SETS), videos, layouts(cfg))
        return (cfg.clip_weight * per_set["clip"] + cfg.frame_weight * per_set["frame"]) * self.logit_scale.exp()


class MaxSim(PRVRModel):
    config_class = MaxSimConfig
    cfg: MaxSimConfig

    def __init__(self, cfg: MaxSimConfig):
        super().__init__(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale)))
        self.query_map = None if cfg.text_dim == cfg.visual_dim else nn.Linear(cfg.text_dim, cfg.visual_dim)

    @property
    def training_free(self) -> bool:
        return self.query_map is None

    def token_layouts(self) -> dict[str, TokenLayout]:
        return layouts(self.cfg)

    def score_weights(self) -> dict[str, float]:
        return {"clip": self.cfg.clip_weight, "frame": self.cfg.frame_weight}

    def encode_videos(self, batch) -> VideoRepr:
        return VideoRepr({"clip": TokenSet(batch.clip), "frame": TokenSet(batch.frames, batch.frame_mask)})

    def encode_queries(self, batch) -> QueryRepr:
        mask = batch.text_mask[..., None]  # (N, L, 1)
        q = (batch.text * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (N, Dq)
        if self.query_map is not None:
            q = self.query_map(q)  # (N, Dv)
        return QueryRepr.single(q, SETS)

    def forward_train(self, batch, draws=None) -> TrainOutputs:
        query = self.encode_queries(batch).vectors[:, 0]  # (N, Dv)
        frames, frame_mask = pad_frames(batch.frames, batch.frame_mask, self.cfg.max_ctx_l)  # same shape on every rank
        return TrainOutputs(query, batch.clip, frames, frame_mask, self.logit_scale)
