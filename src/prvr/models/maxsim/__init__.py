"""MaxSim: training-free search in a text-aligned feature space (CLIP/SigLIP via transformers, or the offline
concept bank): the clip-cell + frame max-similarity the index computes, with nothing learned."""

from prvr.models.maxsim.config import MaxSimConfig, MaxSimLossConfig
from prvr.models.maxsim.loss import MaxSimLoss
from prvr.models.maxsim.model import MaxSim, TrainOutputs
from prvr.models.registry import ModelEntry, register

register(ModelEntry(
    name="maxsim", summary="MaxSim: training-free clip-cell + frame max-similarity in a text-aligned space "
                           "(CLIP, SigLIP, the concept bank)",
    config=MaxSimConfig, loss_config=MaxSimLossConfig, model=MaxSim, loss=MaxSimLoss,
    presets="prvr.models.maxsim.presets"))

__all__ = ["MaxSim", "MaxSimConfig", "MaxSimLoss", "MaxSimLossConfig", "TrainOutputs"]
