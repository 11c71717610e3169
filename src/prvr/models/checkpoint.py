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
from prvr.errors import CheckpointError, NonFiniteError, PrvrError
from prvr.io import atomic_path, check_writable
from prvr.models.base import PRVRModel
from prvr.models.original import load_original_checkpoint
from prvr.models.presets import config_from_dict, default_config
from prvr.models.registry import build_model, get_entry

FORMAT = "prvr-checkpoint-1"
OPTIM_PREFIX = "optim::"
RNG_KEY = "rng::torch"


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: RunConfig, train_state: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a checkpoint atomically. Non-finite weights are never written (NonFiniteError)."""
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().contiguous().cpu()
        if v.data_ptr() in seen:  # one tensor under several names (a module shared by layers): safetensors wants copies
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    bad = nonfinite_tensors(tensors)
    if bad:
        raise NonFiniteError(f"{path}: not written: {len(bad)} weight tensors hold NaN or Inf, e.g. {bad[0]!r}")
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


def _no_constant(name: str):
    raise ValueError(name)


def _json(meta: dict, key: str, path: Path, default: str = "{}"):
    try:
        return json.loads(meta.get(key, default), parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise CheckpointError(f"{path}: corrupt {key} metadata") from None


def load_config(path: str | Path) -> RunConfig:
    return config_from_dict(_json(read_metadata(path), "config", Path(path)), where=str(path))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _weights(path: Path, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (`load_weights` checks them finite: a NaN weight makes NaN scores)."""
    tensors = _tensors(path) if tensors is None else tensors
    return {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX) and k != RNG_KEY}


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path | str) -> None:
    bad = nonfinite_tensors(weights)
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or Inf, e.g. {bad[0]!r}; "
                              "expected finite weights")
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
    tensors = _tensors(path)
    load_weights(model, _weights(path, tensors), path)
    steps = _json(meta, "optim_steps", path)
    if not isinstance(steps, dict):
        raise CheckpointError(f"{path}: corrupt optim_steps metadata")
    for n, p in model.named_parameters():
        if n in steps:
            keys = (f"{OPTIM_PREFIX}{n}::exp_avg", f"{OPTIM_PREFIX}{n}::exp_avg_sq")
            if any(k not in tensors or tensors[k].shape != p.shape for k in keys) or not isinstance(steps[n], int):
                raise CheckpointError(f"{path}: optimiser state of {n!r} missing or of the wrong shape")
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
    check_writable(out, "output checkpoint")
    try:
        mapping = entry.original_config(dict(ckpt["config"]))
        weights_mapping = entry.original_weights_config(ckpt) if entry.original_weights_config is not None else {}
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{src}: its config cannot be read as {model_name}'s ({e.__class__.__name__}: {e})") from None
    cfg = default_config(model_name).apply(mapping, where=f"{src} (config)")
    if weights_mapping:
        cfg.apply(weights_mapping, where=f"{src} (weights)")
    cfg.check(f"{src} (config)")
    model = build_model(cfg.model)
    load_weights(model, entry.original_state(ckpt, model), src)
    info = {"imported_from": Path(src).name, "epoch": ckpt.get("epoch"), "model_val": ckpt.get("model_val")}
    save_checkpoint(out, model, cfg, {k: v for k, v in info.items() if isinstance(v, (int, float, str, list))})
    return cfg
