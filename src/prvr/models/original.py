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


# State-dict names the MS-SL / GMMFormer family shares (DreamPRVR, HLFormer, Holmes): the input projections and
# position embeddings, the query pooling, and the BERT-style names inside every attention block.
FAMILY_INPUT_RULES: list[tuple[str, str]] = [
    (r"^(query|clip|frame)_input_proj\.", r"\1_proj."),
    (r"^(query|clip|frame)_pos_embed\.position_embeddings\.", r"\1_pos.table."),
    (r"^(query|clip|frame)_pos_embed\.LayerNorm\.", r"\1_pos.norm."),
    (r"^modular_vector_mapping\.", "query_pooling."),
]
FAMILY_BLOCK_RULES: list[tuple[str, str]] = [
    (r"\.self\.(query|key|value)\.", r".attn.\1."),
    (r"\.output\.layer1\.", ".ffn.fc1."),
    (r"\.output\.layer2\.", ".ffn.fc2."),
    (r"_proj\.LayerNorm\.", "_proj.norm."),
    (r"_proj\.net\.1\.", "_proj.linear."),
]
NEG_FACTOR = ("diversity_margin", "diversity_alpha", "diversity_lambda")  # the original's `neg_factor` list


def fusion_rules(encoder: str) -> list[tuple[str, str]]:
    """The branch fusion (MAIM) of the clip and frame encoders -> `{clip,frame}_<encoder>.fusion.*`."""
    return [(rf"^(clip|frame)_encoder\.{old}\.", rf"\1_{encoder}.fusion.{new}.")
            for old, new in (("ca", "cross_attn"), ("layer1", "hidden"), ("layer2", "logits"))]


def rename(name: str, rules: Sequence[tuple[str, str]]) -> str:
    """One original state-dict name -> ours, by regex `rules` applied in order."""
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def family_config_mapping(config: dict, model_keys: dict[str, str], loss_factor: Sequence[str],
                          loss_keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The original flat config -> a run-config mapping with a `loss` section: `loss_factor` names the entries of
    the original's `loss_factor` list, NEG_FACTOR those of `neg_factor`, `loss_keys` maps its flat loss keys."""
    loss: dict[str, Any] = {}
    for key, names in (("loss_factor", loss_factor), ("neg_factor", NEG_FACTOR)):
        if config.get(key) is not None:
            loss.update(zip(names, config[key], strict=False))
    for key, name in loss_keys.items():
        if config.get(key) is not None:
            loss[name] = config[key]
    return {**run_mapping(config, model_keys), "loss": loss}


def rename_state(original: dict[str, torch.Tensor], rules: Sequence[tuple[str, str]],
                 expected: dict[str, torch.Tensor], what: str = "original") -> dict[str, torch.Tensor]:
    """Rename an original state dict by regex `rules` (applied in order) and check that it covers `expected`
    (our state dict) exactly, shapes included."""
    converted: dict[str, torch.Tensor] = {}
    for name, value in original.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f"{what} weight {name!r} is not a tensor")
        new = name[len("module."):] if name.startswith("module.") else name  # saved from DataParallel
        new = rename(new, rules)
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
