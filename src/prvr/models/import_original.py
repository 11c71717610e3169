"""Import a checkpoint of the authors' release (torch file: config, epoch, model_val, state_dict, optimizer)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from prvr.config import RunConfig
from prvr.data.layout import canonical_collection
from prvr.errors import CheckpointError
from prvr.models.convert import convert_state_dict, model_config_from_original

# original flat config key -> (section, field)
_RUN_KEYS = {
    "collection": ("data", "collection"), "visual_feature": ("data", "visual_feature"),
    "loss_factor": ("loss", "loss_factor"), "neg_factor": ("loss", "neg_factor"),
    "deterministic_tau": ("loss", "deterministic_tau"), "margin": ("loss", "margin"),
    "hard_pool_size": ("loss", "hard_pool_size"), "lr": ("train", "lr"),
    "lr_warmup_proportion": ("train", "lr_warmup_proportion"), "wd": ("train", "weight_decay"),
    "batchsize": ("train", "batch_videos"), "n_epoch": ("train", "epochs"), "max_es_cnt": ("train", "max_es_cnt"),
    "hard_negative_start_epoch": ("train", "hard_negative_start_epoch"), "seed": ("train", "seed"),
    "eval_context_bsz": ("train", "eval_context_bsz"), "eval_query_bsz": ("train", "eval_query_bsz"),
}


def run_config_from_original(original: dict) -> RunConfig:
    cfg = RunConfig(model=model_config_from_original(original))
    for key, (section, name) in _RUN_KEYS.items():
        if original.get(key) is not None:
            value = original[key]
            current = getattr(getattr(cfg, section), name)
            if isinstance(current, list):
                value = [float(v) for v in value]
            elif current is not None and not isinstance(current, str):
                value = type(current)(value)
            setattr(getattr(cfg, section), name, value)
    cfg.data.collection = canonical_collection(cfg.data.collection)
    return cfg


def import_original_checkpoint(src: str | Path, out: str | Path) -> RunConfig:
    from prvr.models import build_model
    from prvr.train.checkpoint import save_checkpoint

    src = Path(src)
    if not src.exists():
        raise CheckpointError(f"{src}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the load is weights-only anyway
            warnings.simplefilter("ignore")
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{src}: not loadable weights-only as a torch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{src}: expected a dict with keys 'config' and 'state_dict' (the authors' format)")
    cfg = run_config_from_original(dict(ckpt["config"]))
    model = build_model(cfg.model)
    model.load_state_dict(convert_state_dict(ckpt["state_dict"], model))
    info = {"imported_from": src.name, "epoch": ckpt.get("epoch"), "model_val": ckpt.get("model_val")}
    save_checkpoint(out, model, cfg, {k: v for k, v in info.items() if isinstance(v, (int, float, str, list))})
    return cfg
