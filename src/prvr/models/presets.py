"""Run configs of registered models: defaults, per-dataset presets (`models/<name>/presets/<dataset>.yaml`),
YAML files and overrides, resolved in that order."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from prvr.config import Override, RunConfig, read_yaml
from prvr.errors import ConfigError
from prvr.models.registry import DEFAULT_MODEL, get_entry

PRESET_ALIASES = {"act": "activitynet", "cha": "charades"}


def default_config(model: str = DEFAULT_MODEL) -> RunConfig:
    entry = get_entry(model)
    return RunConfig(model=entry.config(), loss=entry.loss_config())


def preset_names(model: str = DEFAULT_MODEL) -> list[str]:
    return get_entry(model).preset_names()


def load_preset(dataset: str, model: str = DEFAULT_MODEL) -> RunConfig:
    entry = get_entry(model)
    dataset = PRESET_ALIASES.get(dataset, dataset)
    path = resources.files(entry.presets) / f"{dataset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {dataset!r} for model {model!r}; available: {', '.join(entry.preset_names())}")
    return default_config(model).apply(yaml.safe_load(path.read_text()), where=f"preset {model}/{dataset}")


def config_from_dict(d: Any, where: str = "config") -> RunConfig:
    """A saved run config (checkpoint metadata, index manifest, config.yaml): its model.name picks the classes."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(d).__name__}")
    model = d.get("model") or {}
    name = model.get("name", DEFAULT_MODEL) if isinstance(model, dict) else DEFAULT_MODEL
    return default_config(name).apply(d, where).check(where)


def model_of_file(path: str | Path) -> str | None:
    """The model a YAML config file names (model.name), if any."""
    d = read_yaml(path)
    model = d.get("model") if isinstance(d, dict) else None
    return model.get("name") if isinstance(model, dict) else None


def resolve(model: str | None = None, preset: str | None = None, config_file: str | Path | None = None,
            overrides: Sequence[Override] = ()) -> RunConfig:
    """Defaults of the model (--model, else the config file's model.name, else dreamprvr) < preset < file < overrides."""
    file_model = model_of_file(config_file) if config_file else None
    if model and file_model and model != file_model:
        raise ConfigError(f"{config_file}: model.name is {file_model!r} but --model is {model!r}")
    model = model or file_model or DEFAULT_MODEL
    cfg = load_preset(preset, model) if preset else default_config(model)
    if config_file:
        cfg.apply(read_yaml(config_file), where=str(config_file))
    for path, value in overrides:
        cfg.set(path, value)
    return cfg.check()
