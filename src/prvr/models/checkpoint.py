"""Checkpoints: one safetensors file holding the weights (and, for resumable ones, the optimiser tensors and
RNG state), with the run config and training state as JSON in its metadata. No pickle, atomic writes.
The authors' own checkpoints are imported through each model's converter (`import_original_checkpoint`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from prvr.config import RunConfig
from prvr.errors import CheckpointError, PrvrError
from prvr.io import atomic_path
from prvr.models.base import PRVRModel
from prvr.models.original import load_original_checkpoint
from prvr.models.presets import config_from_dict, default_config
from prvr.models.registry import build_model, get_entry

FORMAT = "prvr-checkpoint-1"
OPTIM_PREFIX = "optim::"
RNG_KEY = "rng::torch"


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: RunConfig, train_state: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(cfg.to_dict()), "train_state": json.dumps(train_state or {})}
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        steps = {}
        for p, st in optimizer.state.items():
            n = names[id(p)]
            tensors[f"{OPTIM_PREFIX}{n}::exp_avg"] = st["exp_avg"].contiguous().cpu()
            tensors[f"{OPTIM_PREFIX}{n}::exp_avg_sq"] = st["exp_avg_sq"].contiguous().cpu()
            steps[n] = int(st["step"])
        meta["optim_steps"] = json.dumps(steps)
        tensors[RNG_KEY] = torch.get_rng_state()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a prvr checkpoint (metadata format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def _json(meta: dict, key: str, path: Path, default: str = "{}"):
    try:
        return json.loads(meta.get(key, default))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt {key} metadata") from None


def load_config(path: str | Path) -> RunConfig:
    return config_from_dict(_json(read_metadata(path), "config", Path(path)), where=str(path))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable weights ({e})") from None
    return {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX) and k != RNG_KEY}


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path | str) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model in its config ({str(e).splitlines()[0]})") from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[PRVRModel, RunConfig, dict]:
    """-> (model in eval mode, RunConfig, train_state dict)."""
    path = Path(path)
    meta = read_metadata(path)
    cfg = config_from_dict(_json(meta, "config", path), where=str(path))
    model = build_model(cfg.model, device)
    load_weights(model, _weights(path), path)
    model.eval()
    return model, cfg, _json(meta, "train_state", path)


def restore_training(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights, optimiser moments/steps and the torch RNG state for an exact resume."""
    path = Path(path)
    meta = read_metadata(path)
    tensors = load_file(str(path), device="cpu")
    load_weights(model, _weights(path), path)
    steps = _json(meta, "optim_steps", path)
    for n, p in model.named_parameters():
        if n in steps:
            optimizer.state[p] = {
                "step": steps[n],
                "exp_avg": tensors[f"{OPTIM_PREFIX}{n}::exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{OPTIM_PREFIX}{n}::exp_avg_sq"].to(p.device),
            }
    if RNG_KEY in tensors:
        torch.set_rng_state(tensors[RNG_KEY])
    return _json(meta, "train_state", path)


def import_original_checkpoint(src: str | Path, out: str | Path, model_name: str) -> RunConfig:
    """Convert the authors' checkpoint of a registered model into a prvr checkpoint."""
    entry = get_entry(model_name)
    if entry.original_config is None or entry.original_state is None:
        raise PrvrError(f"model {model_name!r} has no converter for the authors' checkpoints")
    ckpt = load_original_checkpoint(src)
    cfg = default_config(model_name).apply(entry.original_config(dict(ckpt["config"])), where=f"{src} (config)")
    if entry.original_weights_config is not None:
        cfg.apply(entry.original_weights_config(ckpt), where=f"{src} (weights)")
    cfg.check()
    model = build_model(cfg.model)
    load_weights(model, entry.original_state(ckpt, model), src)
    info = {"imported_from": Path(src).name, "epoch": ckpt.get("epoch"), "model_val": ckpt.get("model_val")}
    save_checkpoint(out, model, cfg, {k: v for k, v in info.items() if isinstance(v, (int, float, str, list))})
    return cfg
