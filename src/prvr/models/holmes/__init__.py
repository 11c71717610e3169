"""Holmes (ICML 2026): hierarchical evidential learning on the Gaussian-mixture attention encoders; single- and
multi-query ("dual-query") forms."""

from prvr.models.holmes.config import HolmesConfig, HolmesLossConfig
from prvr.models.holmes.convert import config_mapping, convert_original, weights_mapping
from prvr.models.holmes.loss import HolmesLoss
from prvr.models.holmes.model import Holmes, TrainOutputs
from prvr.models.registry import ModelEntry, register

register(ModelEntry(
    name="holmes", summary="Holmes (ICML 2026): evidential learning on clip and frame scores, partial-OT intra-video "
    "evidence; single- or dual-query",
    config=HolmesConfig, loss_config=HolmesLossConfig, model=Holmes, loss=HolmesLoss,
    presets="prvr.models.holmes.presets", original_config=config_mapping, original_state=convert_original,
    original_weights_config=weights_mapping))

__all__ = ["Holmes", "HolmesConfig", "HolmesLoss", "HolmesLossConfig", "TrainOutputs"]
