"""MaxSim's loss: symmetric info-NCE on the temperature-scaled score (it trains the temperature, and the
text -> visual map when the widths differ)."""

from __future__ import annotations

import torch

from prvr.models.base import ModelLoss, TrainStep
from prvr.models.losses import info_nce
from prvr.models.maxsim.config import MaxSimLossConfig
from prvr.models.maxsim.model import TrainOutputs


class MaxSimLoss(ModelLoss):
    config_class = MaxSimLossConfig

    def __call__(self, out: TrainOutputs, labels: torch.Tensor, step: TrainStep
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nce = info_nce(out.scores(self.model_cfg), labels)
        return nce, {"nce": nce.detach()}
