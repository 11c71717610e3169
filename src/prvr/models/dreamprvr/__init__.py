"""DreamPRVR (CVPR 2026): diffusion-imagined global registers and register-augmented Gaussian attention."""

from prvr.models.dreamprvr.config import DreamPRVRConfig, DreamPRVRLossConfig
from prvr.models.dreamprvr.convert import config_mapping, convert_original
from prvr.models.dreamprvr.loss import DreamPRVRLoss
from prvr.models.dreamprvr.model import DreamPRVR, TrainOutputs
from prvr.models.registry import ModelEntry, register

register(ModelEntry(
    name="dreamprvr", summary="DreamPRVR (CVPR 2026): diffusion-imagined registers, Gaussian attention at two scales",
    config=DreamPRVRConfig, loss_config=DreamPRVRLossConfig, model=DreamPRVR, loss=DreamPRVRLoss,
    presets="prvr.models.dreamprvr.presets", original_config=config_mapping, original_state=convert_original))

__all__ = ["DreamPRVR", "DreamPRVRConfig", "DreamPRVRLoss", "DreamPRVRLossConfig", "TrainOutputs"]
