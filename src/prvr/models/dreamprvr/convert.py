"""The authors' DreamPRVR release -> prvr: state-dict names and config keys, so their checkpoints load."""

from __future__ import annotations

import re

import torch

from prvr.models.original import rename_state, run_mapping

# Applied in order to each original name.
RULES: list[tuple[str, str]] = [
    (r"^(query|clip|frame)_input_proj\.", r"\1_proj."),
    (r"^(query|clip|frame)_pos_embed\.position_embeddings\.", r"\1_pos.table."),
    (r"^(query|clip|frame)_pos_embed\.LayerNorm\.", r"\1_pos.norm."),
    (r"^modular_vector_mapping\.", "query_pooling."),
    (r"^video_qformer\.query_tokens$", "register_condition.queries"),
    (r"^video_qformer\.cross_attention\.", "register_condition.cross_attn."),
    (r"^(clip|frame)_encoder\.e_attns\.", r"\1_branch.branches.blocks."),
    (r"^(clip|frame)_encoder\.ca\.", r"\1_branch.fusion.cross_attn."),
    (r"^(clip|frame)_encoder\.layer1\.", r"\1_branch.fusion.hidden."),
    (r"^(clip|frame)_encoder\.layer2\.", r"\1_branch.fusion.logits."),
    (r"^(clip|frame)_encoder\.noise_input_layer\.", r"\1_branch.register_proj."),
    (r"^video_probabilistic_variational_sampler\.", "video_sampler."),
    (r"^video_sampler\.gpo\.linear\.", "video_sampler.gpo.score."),
    (r"^video_sampler\.pie_net_video\.", "video_sampler.mean_head."),
    (r"^video_sampler\.uncertain_net_video\.", "video_sampler.logvar_head."),
    (r"\.attention\.w_1\.", ".pool.proj."),
    (r"\.attention\.w_2\.", ".pool.score."),
    (r"^video_sampler\.mean_head\.layer_norm\.", "video_sampler.mean_head.norm."),
    (r"^video_sampler\.logvar_head\.fc2\.", "video_sampler.logvar_head.fc_pooled."),
    (r"^diffusion_mlp\.time_embedding\.timembedding\.0\.", "denoiser.time_embed.table."),
    (r"^diffusion_mlp\.time_embedding\.timembedding\.1\.", "denoiser.time_embed.fc1."),
    (r"^diffusion_mlp\.time_embedding\.timembedding\.3\.", "denoiser.time_embed.fc2."),
    (r"^diffusion_mlp\.cond_embedding\.0\.", "denoiser.cond_norm."),
    (r"^diffusion_mlp\.cond_embedding\.2\.", "denoiser.cond_linear."),
    (r"^diffusion_mlp\.layers\.(\d+)\.blcok_in\.0\.", r"denoiser.blocks.\1.in_norm."),
    (r"^diffusion_mlp\.layers\.(\d+)\.blcok_in\.2\.", r"denoiser.blocks.\1.in_linear."),
    (r"^diffusion_mlp\.layers\.(\d+)\.blcok_out\.0\.", r"denoiser.blocks.\1.out_norm."),
    (r"^diffusion_mlp\.layers\.(\d+)\.blcok_out\.3\.", r"denoiser.blocks.\1.out_linear."),
    (r"^diffusion_mlp\.layers\.(\d+)\.temb_proj\.1\.", r"denoiser.blocks.\1.time_proj."),
    (r"^diffusion_mlp\.layers\.(\d+)\.cond_proj\.1\.", r"denoiser.blocks.\1.cond_proj."),
    (r"^diffusion_mlp\.layers\.(\d+)\.short_cut\.", r"denoiser.blocks.\1.shortcut."),
    (r"^diffusion_mlp\.short_cut\.", "denoiser.out."),
    (r"\.self\.(query|key|value)\.", r".attn.\1."),
    (r"\.output\.layer1\.", ".ffn.fc1."),
    (r"\.output\.layer2\.", ".ffn.fc2."),
    (r"_proj\.LayerNorm\.", "_proj.norm."),
    (r"_proj\.net\.1\.", "_proj.linear."),
]
_COMPILED = [(re.compile(p), r) for p, r in RULES]

# original flat config key -> DreamPRVRConfig field (both the released Configs/*.py names and the model's own)
MODEL_KEYS = {
    "hidden_size": "hidden_size", "n_heads": "n_heads", "input_drop": "input_drop", "drop": "drop",
    "attention_num": "attention_num", "sft_factor": "sft_factor", "num_registers": "num_registers",
    "timesteps": "timesteps", "num_diffusion_layers": "num_diffusion_layers",
    "initializer_range": "initializer_range", "clip_scale_w": "clip_scale_w", "frame_scale_w": "frame_scale_w",
    "perturbation_scale": "perturbation_scale",
}
LOSS_FACTOR = ("clip_nce_weight", "frame_nce_weight", "query_diversity_weight",
               "query_similarity_preservation_weight", "kl_weight", "diffusion_weight")
NEG_FACTOR = ("diversity_margin", "diversity_alpha", "diversity_lambda")


def original_name(name: str) -> str:
    """Map one original state-dict name to ours."""
    for pattern, repl in _COMPILED:
        name = pattern.sub(repl, name)
    return name


def convert_state_dict(original: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an original state dict and check it covers `model` exactly, shapes included."""
    return rename_state(original, RULES, model.state_dict())


def config_mapping(config: dict) -> dict:
    """The original flat config -> a DreamPRVR run-config mapping."""
    out = run_mapping(config, MODEL_KEYS)
    loss = {}
    for key, names in (("loss_factor", LOSS_FACTOR), ("neg_factor", NEG_FACTOR)):
        if config.get(key) is not None:
            loss.update(zip(names, config[key], strict=False))
    for key, name in (("deterministic_tau", "similarity_tau"), ("margin", "margin"), ("hard_pool_size", "hard_pool_size")):
        if config.get(key) is not None:
            loss[name] = config[key]
    return {**out, "loss": loss}


def convert_original(ckpt: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The authors' checkpoint dict -> our state dict for `model` (built from `config_mapping(ckpt['config'])`)."""
    return convert_state_dict(ckpt["state_dict"], model)
