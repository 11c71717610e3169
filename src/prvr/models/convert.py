"""Original DreamPRVR state-dict names -> prvr names, so the authors' checkpoints load into our modules."""

from __future__ import annotations

import re

import torch

from prvr.config import ModelConfig
from prvr.errors import CheckpointError

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


def original_name(name: str) -> str:
    """Map one original state-dict name to ours."""
    for pattern, repl in _COMPILED:
        name = pattern.sub(repl, name)
    return name


def convert_state_dict(original: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an original state dict and check it covers `model` exactly, shapes included."""
    ours = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for name, value in original.items():
        if name.startswith("module."):  # saved from DataParallel
            name = name[len("module."):]
        new = original_name(name)
        if new not in ours:
            raise CheckpointError(f"original weight {name!r} (as {new!r}) has no place in this model configuration")
        if tuple(value.shape) != tuple(ours[new].shape):
            raise CheckpointError(f"original weight {name!r}: shape {tuple(value.shape)}, model expects {tuple(ours[new].shape)}")
        converted[new] = torch.as_tensor(value)
    missing = sorted(set(ours) - set(converted))
    if missing:
        raise CheckpointError(f"original checkpoint lacks {len(missing)} weights, e.g. {missing[0]!r}")
    return converted


# original flat config key -> ModelConfig field (both the released Configs/*.py names and the model's own)
CONFIG_KEYS = {
    "visual_feat_dim": "visual_dim", "visual_input_size": "visual_dim",
    "q_feat_size": "text_dim", "query_input_size": "text_dim",
    "hidden_size": "hidden_size", "n_heads": "n_heads", "input_drop": "input_drop", "drop": "drop",
    "map_size": "map_size", "max_ctx_l": "max_ctx_l", "max_desc_l": "max_desc_l",
    "attention_num": "attention_num", "sft_factor": "sft_factor", "num_registers": "num_registers",
    "timesteps": "timesteps", "num_diffusion_layers": "num_diffusion_layers",
    "initializer_range": "initializer_range", "clip_scale_w": "clip_scale_w", "frame_scale_w": "frame_scale_w",
    "perturbation_scale": "perturbation_scale",
}


def model_config_from_original(original: dict) -> ModelConfig:
    cfg = ModelConfig()
    for key, field_name in CONFIG_KEYS.items():
        if key in original and original[key] is not None:
            current = getattr(cfg, field_name)
            setattr(cfg, field_name, type(current)(original[key]))
    return cfg
