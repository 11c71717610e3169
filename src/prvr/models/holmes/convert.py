"""The authors' Holmes release -> prvr: state-dict names and config keys, so their checkpoints load."""

from __future__ import annotations

import re

import torch

from prvr.errors import CheckpointError
from prvr.models.original import rename_state, run_mapping

# Applied in order to each original name.
RULES: list[tuple[str, str]] = [
    (r"^frame_encoder_1\.", "frame_encoder."),
    (r"^(query|clip|frame)_input_proj\.", r"\1_proj."),
    (r"^frame_branch_query_proj\.", "frame_query_proj."),
    (r"^frame_branch_query_encoder\.", "frame_query_encoder."),
    (r"^text_weight_fc\.0\.", "token_weights.hidden."),
    (r"^text_weight_fc\.2\.", "token_weights.out."),
    (r"^(query|clip|frame)_pos_embed\.position_embeddings\.", r"\1_pos.table."),
    (r"^(query|clip|frame)_pos_embed\.LayerNorm\.", r"\1_pos.norm."),
    (r"^modular_vector_mapping\.", "query_pooling."),
    (r"^(clip|frame)_encoder\.e_attns\.", r"\1_branch.branches.blocks."),
    (r"^(clip|frame)_encoder\.ca\.", r"\1_branch.fusion.cross_attn."),
    (r"^(clip|frame)_encoder\.layer1\.", r"\1_branch.fusion.hidden."),
    (r"^(clip|frame)_encoder\.layer2\.", r"\1_branch.fusion.logits."),
    (r"\.self\.(query|key|value)\.", r".attn.\1."),
    (r"\.output\.layer1\.", ".ffn.fc1."),
    (r"\.output\.layer2\.", ".ffn.fc2."),
    (r"_proj\.LayerNorm\.", "_proj.norm."),
    (r"_proj\.net\.1\.", "_proj.linear."),
]
_COMPILED = [(re.compile(p), r) for p, r in RULES]
MULTI_MARKER = "frame_branch_query_encoder."  # only the multi-query tree (multisrc/) has the frame branch's query encoder

# original flat config key -> HolmesConfig field
MODEL_KEYS = {
    "hidden_size": "hidden_size", "n_heads": "n_heads", "input_drop": "input_drop", "drop": "drop",
    "sft_factor": "sft_factor", "initializer_range": "initializer_range", "clip_scale_w": "clip_scale_w",
    "frame_scale_w": "frame_scale_w",
}
LOSS_FACTOR = ("clip_nce_weight", "frame_nce_weight", "query_diversity_weight", "intra_video_edl_weight",
               "edl_weight", "consistency_weight")
NEG_FACTOR = ("diversity_margin", "diversity_alpha", "diversity_lambda")
LOSS_KEYS = {
    "margin": "margin", "hard_pool_size": "hard_pool_size", "edl_tau": "edl_tau",
    "edl_intra_video_tau": "intra_video_edl_tau", "pot_scale": "pot_scale", "pot_prompt_ratio": "pot_prompt_ratio",
    "division_beta": "division_beta", "smooth_beta": "smooth_beta", "warmup_epoch": "refine_start_epoch",
}


def original_name(name: str) -> str:
    """Map one original state-dict name to ours."""
    for pattern, repl in _COMPILED:
        name = pattern.sub(repl, name)
    return name


def original_query_form(state: dict) -> str:
    """Which tree trained a state dict: multi (multisrc/, it has the frame branch's query encoder) or single."""
    names = (n[len("module."):] if n.startswith("module.") else n for n in state)
    return "multi" if any(n.startswith(MULTI_MARKER) for n in names) else "single"


def convert_state_dict(original: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an original state dict and check it covers `model` exactly, shapes included."""
    form = original_query_form(original)
    if form != model.cfg.query_form:
        raise CheckpointError(f"the authors' weights are of the {form}-query form, the model is "
                              f"model.query_form={model.cfg.query_form}")
    return rename_state(original, RULES, model.state_dict())


def config_mapping(config: dict) -> dict:
    """The original flat config -> a Holmes run-config mapping (the query form is in the weights, not the config:
    see `weights_mapping`)."""
    out = run_mapping(config, MODEL_KEYS)
    loss = {}
    for key, names in (("loss_factor", LOSS_FACTOR), ("neg_factor", NEG_FACTOR)):
        if config.get(key) is not None:
            loss.update(zip(names, config[key], strict=False))
    for key, name in LOSS_KEYS.items():
        if config.get(key) is not None:
            loss[name] = config[key]
    return {**out, "loss": loss}


def weights_mapping(ckpt: dict) -> dict:
    """What the authors' checkpoint says about the configuration through its weights: the query form."""
    return {"model": {"query_form": original_query_form(ckpt["state_dict"])}}


def convert_original(ckpt: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The authors' checkpoint dict -> our state dict for `model` (built from `config_mapping(ckpt['config'])`
    and `weights_mapping(ckpt)`)."""
    return convert_state_dict(ckpt["state_dict"], model)
