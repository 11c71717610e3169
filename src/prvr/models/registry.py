"""Model registry: name -> builder from a typed config (one line to construct any model)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prvr.config import ModelConfig
from prvr.errors import PrvrError

_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> nn.Module:
    if cfg.name not in _REGISTRY:
        raise PrvrError(f"unknown model {cfg.name!r}; available: {', '.join(model_names())}")
    return _REGISTRY[cfg.name](cfg).to(device)


@register("dreamprvr")
def _dreamprvr(cfg: ModelConfig) -> nn.Module:
    from prvr.models.dreamprvr import DreamPRVR

    return DreamPRVR(cfg)
