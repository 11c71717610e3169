"""The authors' DreamPRVR release -> prvr: state-dict names and config keys, so their checkpoints load."""

from __future__ import annotations

import torch

from prvr.models.original import (
    FAMILY_BLOCK_RULES,
    FAMILY_INPUT_RULES,
    family_config_mapping,
    fusion_rules,
    rename,
    rename_state,
)

# Applied in order to each original name.
RULES: list[tuple[str, str]] = [
    *FAMILY_INPUT_RULES,
    (r"^video_qformer\.query_tokens$", "register_condition.queries"),
    (r"^video_qformer\.cross_attention\.", "register_condition.cross_attn."),
    (r"^(clip|frame)_encoder\.e_attns\.", r"\1_branch.branches.blocks."),
    *fusion_rules("branch"),
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
    *FAMILY_BLOCK_RULES,
]

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
LOSS_KEYS = {"deterministic_tau": "similarity_tau", "margin": "margin", "hard_pool_size": "hard_pool_size"}


def original_name(name: str) -> str:
    """Map one original state-dict name to ours."""
    return rename(name, RULES)


def convert_state_dict(original: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an original state dict and check it covers `model` exactly, shapes included."""
    return rename_state(original, RULES, model.state_dict())


def config_mapping(config: dict) -> dict:
    """The original flat config -> a DreamPRVR run-config mapping."""
    return family_config_mapping(config, MODEL_KEYS, LOSS_FACTOR, LOSS_KEYS)


def convert_original(ckpt: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The authors' checkpoint dict -> our state dict for `model` (built from `config_mapping(ckpt['config'])`)."""
    return convert_state_dict(ckpt["state_dict"], model)
