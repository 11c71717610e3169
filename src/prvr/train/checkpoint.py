"""Checkpoints: one safetensors file holding the weights (and, for resumable ones, the optimiser tensors and
RNG state), with the run config and training state as JSON in its metadata. No pickle, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from prvr.config import RunConfig
from prvr.errors import CheckpointError
from prvr.io import atomic_path

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
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a prvr checkpoint (metadata format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def load_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(json.loads(read_metadata(path)["config"]))


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"):
    """-> (model in eval mode, RunConfig, train_state dict)."""
    from prvr.models import build_model

    meta = read_metadata(path)
    cfg = RunConfig.from_dict(json.loads(meta["config"]))
    model = build_model(cfg.model, device)
    tensors = load_file(str(path), device="cpu")
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX) and k != RNG_KEY}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model in its config ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, cfg, json.loads(meta.get("train_state", "{}"))


def restore_training(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights, optimiser moments/steps and the torch RNG state for an exact resume."""
    meta = read_metadata(path)
    tensors = load_file(str(path), device="cpu")
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX) and k != RNG_KEY})
    steps = json.loads(meta.get("optim_steps", "{}"))
    for n, p in model.named_parameters():
        if n in steps:
            optimizer.state[p] = {
                "step": steps[n],
                "exp_avg": tensors[f"{OPTIM_PREFIX}{n}::exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{OPTIM_PREFIX}{n}::exp_avg_sq"].to(p.device),
            }
    if RNG_KEY in tensors:
        torch.set_rng_state(tensors[RNG_KEY])
    return json.loads(meta.get("train_state", "{}"))
