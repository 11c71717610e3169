"""The authors' HLFormer release -> prvr: state-dict names and config keys, so their checkpoints load.

The names map one-to-one, shapes included, also for the curvature constant `manifold.k`: one tensor shared by
every layer that computes on the hyperboloid, listed under each of them (41 names at full width), as in theirs.
"""

from __future__ import annotations

import re

import torch

from prvr.errors import CheckpointError
from prvr.models.original import rename_state, run_mapping

# Applied in order to each original name.
RULES: list[tuple[str, str]] = [
    (r"^(query|clip|frame)_input_proj\.", r"\1_proj."),
    (r"^(query|clip|frame)_pos_embed\.position_embeddings\.", r"\1_pos.table."),
    (r"^(query|clip|frame)_pos_embed\.LayerNorm\.", r"\1_pos.norm."),
    (r"^modular_vector_mapping\.", "query_pooling."),
    (r"^modular_vector_mapping_2\.", "frame_pooling."),
    (r"^modular_vector_mapping_3\.", "clip_pooling."),
    (r"^frame_encoder_1\.", "frame_encoder."),
    (r"^(clip|frame)_encoder\.e_attns\.", r"\1_encoder.euclidean.blocks."),
    (r"^(clip|frame)_encoder\.h_attns\.(\d+)\.self\.lorentz_multiattention\.", r"\1_encoder.lorentz.blocks.\2.attn."),
    (r"^(clip|frame)_encoder\.h_attns\.(\d+)\.self\.input_proj\.", r"\1_encoder.lorentz.blocks.\2.in_proj."),
    (r"^(clip|frame)_encoder\.h_attns\.(\d+)\.self\.output_proj\.", r"\1_encoder.lorentz.blocks.\2.out_proj."),
    (r"^(clip|frame)_encoder\.h_attns\.(\d+)\.self\.", r"\1_encoder.lorentz.blocks.\2."),
    (r"^(clip|frame)_encoder\.h_attns\.", r"\1_encoder.lorentz.blocks."),
    (r"^(clip|frame)_encoder\.ca\.", r"\1_encoder.fusion.cross_attn."),
    (r"^(clip|frame)_encoder\.layer1\.", r"\1_encoder.fusion.hidden."),
    (r"^(clip|frame)_encoder\.layer2\.", r"\1_encoder.fusion.logits."),
    (r"\.linear_query\.", ".query."),
    (r"\.linear_keys\.", ".key."),
    (r"\.linear_values\.", ".value."),
    (r"\.(query|key|value)\.weight\.weight$", r".\1.linear.weight"),  # LorentzLinear wraps an nn.Linear
    (r"\.self\.(query|key|value)\.", r".attn.\1."),
    (r"\.output\.layer1\.", ".ffn.fc1."),
    (r"\.output\.layer2\.", ".ffn.fc2."),
    (r"_proj\.LayerNorm\.", "_proj.norm."),
    (r"_proj\.net\.1\.", "_proj.linear."),
]
_COMPILED = [(re.compile(p), r) for p, r in RULES]

# original flat config key -> HLFormerConfig field (the released Configs/*.py names and the model's own)
MODEL_KEYS = {
    "hidden_size": "hidden_size", "n_heads": "n_heads", "input_drop": "input_drop", "drop": "drop",
    "lorentz_dim": "lorentz_dim", "attention_num": "attention_num", "sft_factor": "sft_factor",
    "initializer_range": "initializer_range", "clip_scale_w": "clip_scale_w", "frame_scale_w": "frame_scale_w",
    "curv_init": "curv_init", "learn_curv_bool": "learn_curv", "learn_curv": "learn_curv",
}
LOSS_FACTOR = ("clip_nce_weight", "frame_nce_weight", "query_diversity_weight", "partial_order_weight")
NEG_FACTOR = ("diversity_margin", "diversity_alpha", "diversity_lambda")


def original_name(name: str) -> str:
    """Map one original state-dict name to ours."""
    for pattern, repl in _COMPILED:
        name = pattern.sub(repl, name)
    return name


def convert_state_dict(original: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an original state dict and check it covers `model` exactly, shapes included; the shared curvature
    constant must have one value under all its names."""
    state = rename_state(original, RULES, model.state_dict())
    ks = {float(v) for n, v in state.items() if n == "manifold.k" or n.endswith(".manifold.k")}
    if len(ks) > 1:
        raise CheckpointError(f"original checkpoint: the manifold constant k differs between layers ({sorted(ks)})")
    return state


def config_mapping(config: dict) -> dict:
    """The original flat config -> an HLFormer run-config mapping."""
    out = run_mapping(config, MODEL_KEYS)
    loss = {}
    for key, names in (("loss_factor", LOSS_FACTOR), ("neg_factor", NEG_FACTOR)):
        if config.get(key) is not None:
            loss.update(zip(names, config[key], strict=False))
    for key in ("margin", "hard_pool_size"):
        if config.get(key) is not None:
            loss[key] = config[key]
    return {**out, "loss": loss}


def convert_original(ckpt: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The authors' checkpoint dict -> our state dict for `model` (built from `config_mapping(ckpt['config'])`)."""
    return convert_state_dict(ckpt["state_dict"], model)
