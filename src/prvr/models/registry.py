"""The model registry: name -> config class, model class, loss, presets and the authors'-checkpoint converter.

Each model package registers itself on import (`prvr.models` imports them all), so `build_model(cfg)` constructs
any model in one line and a new model is one package plus one `register(...)` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import torch

from prvr.config import LossConfig, ModelConfig
from prvr.errors import ConfigError
from prvr.models.base import ModelLoss, PRVRModel


@dataclass(frozen=True)
class ModelEntry:
    name: str
    summary: str  # one line for `prvr models`
    config: type[ModelConfig]
    loss_config: type[LossConfig]
    model: type[PRVRModel]
    loss: type[ModelLoss]
    presets: str  # package holding the per-dataset presets <dataset>.yaml
    # the authors' release: their flat config dict -> a run-config mapping, and their checkpoint dict (loaded
    # weights-only) -> our state dict for a model built from that config
    original_config: Callable[[dict], dict] | None = None
    original_state: Callable[[dict, PRVRModel], dict[str, torch.Tensor]] | None = None
    # optional: the authors' checkpoint dict -> run-config values only its weights tell (e.g. which variant of the
    # model they are), applied over `original_config`
    original_weights_config: Callable[[dict], dict] | None = None

    def preset_names(self) -> list[str]:
        return sorted(p.name[:-5] for p in resources.files(self.presets).iterdir() if p.name.endswith(".yaml"))


_REGISTRY: dict[str, ModelEntry] = {}
DEFAULT_MODEL = "dreamprvr"


def register(entry: ModelEntry) -> ModelEntry:
    if entry.config.name != entry.name:
        raise ValueError(f"{entry.config.__name__}.name is {entry.config.name!r}, registered as {entry.name!r}")
    _REGISTRY[entry.name] = entry
    return entry


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(model_names())}")
    return _REGISTRY[name]


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> PRVRModel:
    return get_entry(cfg.name).model(cfg).to(device)


def build_loss(loss_cfg: LossConfig, model_cfg: ModelConfig) -> ModelLoss:
    return get_entry(model_cfg.name).loss(loss_cfg, model_cfg)
