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

import torch
from torch import nn

from prvr.models.base import PRVRModel, QueryRepr, TokenLayout, TokenSet, VideoRepr
from prvr.models.maxsim.config import MaxSimConfig

SETS = ("clip", "frame")


@dataclass
class TrainOutputs:
    scores: torch.Tensor  # (N, B) weighted max-similarity, multiplied by exp(logit_scale)


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
        return {"clip": TokenLayout(self.cfg.map_size), "frame": TokenLayout(self.cfg.max_ctx_l, ragged=True)}

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
        scores = self.score(self.encode_queries(batch), self.encode_videos(batch))  # (N, B)
        return TrainOutputs(scores * self.logit_scale.exp())
