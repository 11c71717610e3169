"""MaxSim's typed configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prvr.config import LossConfig, ModelConfig, field


@dataclass
class MaxSimConfig(ModelConfig):
    name: ClassVar[str] = "maxsim"

    visual_dim: int = field(1000, ge=1, le=65536)  # the default: the concept bank's 1,000 ImageNet classes
    text_dim: int = field(1000, ge=1, le=65536)
    clip_weight: float = field(0.5, ge=0.0, le=1000.0)  # w of the clip-cell max-similarity
    frame_weight: float = field(0.5, ge=0.0, le=1000.0)  # w of the frame max-similarity
    logit_scale: float = field(2.6592, ge=-10.0, le=10.0)  # log(1/0.07): the trained temperature's start (CLIP's)


@dataclass
class MaxSimLossConfig(LossConfig):
    pass
