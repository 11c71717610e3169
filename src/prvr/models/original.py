"""What the authors' releases of this family (MS-SL, GMMFormer, HLFormer, DreamPRVR, Holmes) share: a flat config
dict with the same training and data keys, state dicts saved by torch (sometimes from DataParallel), and
checkpoint files `{config, epoch, model_val, state_dict, optimizer}`. Each model's `convert.py` adds its own
names on top."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prvr.data.layout import canonical_collection
from prvr.errors import CheckpointError

# original flat config key -> (section, field) for the keys every model of the family uses
RUN_KEYS: dict[str, tuple[str, str]] = {
    "collection": ("data", "collection"), "visual_feature": ("data", "visual_feature"),
    "lr": ("train", "lr"), "lr_warmup_proportion": ("train", "lr_warmup_proportion"),
    "wd": ("train", "weight_decay"), "batchsize": ("train", "batch_videos"), "n_epoch": ("train", "epochs"),
    "max_es_cnt": ("train", "max_es_cnt"), "hard_negative_start_epoch": ("train", "hard_negative_start_epoch"),
    "seed": ("train", "seed"), "eval_context_bsz": ("train", "eval_context_bsz"),
    "eval_query_bsz": ("train", "eval_query_bsz"),
}
# the input sizes every model config has (prvr.config.ModelConfig)
INPUT_KEYS: dict[str, str] = {
    "visual_feat_dim": "visual_dim", "visual_input_size": "visual_dim", "q_feat_size": "text_dim",
    "query_input_size": "text_dim", "map_size": "map_size", "max_ctx_l": "max_ctx_l", "max_desc_l": "max_desc_l",
}


class InertObject:
    """Stands in for an object of the authors' training code pickled inside their checkpoints (the learning-rate
    schedule in the optimiser's parameter groups): it keeps the pickled state as plain data and runs no code."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


# The schedule classes of the authors' Opts/optimization.py (shared by the family's releases): every checkpoint their
# main.py saves pickles one of these in `optimizer.param_groups[*]['schedule']`.
_SCHEDULES = ("_LRSchedule", "ConstantLR", "WarmupCosineSchedule", "WarmupCosineWithHardRestartsSchedule",
              "WarmupCosineWithWarmupRestartsSchedule", "WarmupConstantSchedule", "WarmupLinearSchedule")
INERT_GLOBALS = [(InertObject, f"Opts.optimization.{name}") for name in _SCHEDULES]


def load_original_checkpoint(path: str | Path) -> dict:
    """The authors' torch checkpoint, loaded weights-only: tensors and plain containers only, and the known
    classes of their training code mapped to `InertObject` (no code from the file ever runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(INERT_GLOBALS):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; the load is weights-only anyway
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, RecursionError, Exception) as e:  # untrusted bytes: any failure of the parser is "not one"
        reason = _load_failure(e)
        raise CheckpointError(f"{path}: not a torch checkpoint that loads weights-only ({reason}); expected the "
                              "authors' .ckpt/.pth file") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'config' dict and a 'state_dict' (the authors' format)")
    return ckpt


def _load_failure(e: BaseException) -> str:
    """A short reason for a failed weights-only load (torch's own message advises unsafe loading: not repeated)."""
    if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
        first = [ln for ln in str(e).splitlines() if ln.startswith(("Unsupported", "WeightsUnpickler error"))]
        return first[0][:200] if first else "it holds objects other than tensors and plain containers"
    if isinstance(e, EOFError):
        return "empty or truncated file"
    return e.__class__.__name__


def run_mapping(config: dict, model_keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The original flat config -> a run-config mapping {model, train, data} (loss keys are each model's)."""
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
    for key, name in {**INPUT_KEYS, **model_keys}.items():
        if config.get(key) is not None:
            out["model"][name] = config[key]
    for key, (section, name) in RUN_KEYS.items():
        if config.get(key) is not None:
            out[section][name] = config[key]
    if "collection" in out["data"]:
        out["data"]["collection"] = canonical_collection(str(out["data"]["collection"]))
    return out


def rename_state(original: dict[str, torch.Tensor], rules: Sequence[tuple[str, str]],
                 expected: dict[str, torch.Tensor], what: str = "original") -> dict[str, torch.Tensor]:
    """Rename an original state dict by regex `rules` (applied in order) and check that it covers `expected`
    (our state dict) exactly, shapes included."""
    compiled = [(re.compile(p), r) for p, r in rules]
    converted: dict[str, torch.Tensor] = {}
    for name, value in original.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f"{what} weight {name!r} is not a tensor")
        new = name[len("module."):] if name.startswith("module.") else name  # saved from DataParallel
        for pattern, repl in compiled:
            new = pattern.sub(repl, new)
        if new not in expected:
            raise CheckpointError(f"{what} weight {name!r} (as {new!r}) has no place in this model configuration")
        if tuple(value.shape) != tuple(expected[new].shape):
            raise CheckpointError(f"{what} weight {name!r}: shape {tuple(value.shape)}, model expects "
                                  f"{tuple(expected[new].shape)}")
        converted[new] = value
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise CheckpointError(f"{what} checkpoint lacks {len(missing)} weights, e.g. {missing[0]!r}")
    return converted
