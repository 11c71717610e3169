"""HLFormer (ICCV 2025): hybrid Euclidean and Lorentz attention, and a text-in-video partial order in hyperbolic space."""

from prvr.models.hlformer.config import HLFormerConfig, HLFormerLossConfig
from prvr.models.hlformer.convert import config_mapping, convert_original
from prvr.models.hlformer.loss import HLFormerLoss
from prvr.models.hlformer.model import HLFormer, TrainOutputs
from prvr.models.registry import ModelEntry, register

register(ModelEntry(
    name="hlformer", summary="HLFormer (ICCV 2025): Euclidean + Lorentz attention branches, hyperbolic partial-order loss",
    config=HLFormerConfig, loss_config=HLFormerLossConfig, model=HLFormer, loss=HLFormerLoss,
    presets="prvr.models.hlformer.presets", original_config=config_mapping, original_state=convert_original))

__all__ = ["HLFormer", "HLFormerConfig", "HLFormerLoss", "HLFormerLossConfig", "TrainOutputs"]
