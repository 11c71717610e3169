"""DreamPRVR's typed configs (model and loss); defaults are the authors' Charades-STA values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prvr.config import LossConfig, ModelConfig, field
from prvr.errors import ConfigError


@dataclass
class DreamPRVRConfig(ModelConfig):
    name: ClassVar[str] = "dreamprvr"

    hidden_size: int = field(384, ge=2, le=16384)  # D
    n_heads: int = field(4, ge=1, le=1024)
    input_drop: float = field(0.25, ge=0.0, le=0.9)
    drop: float = field(0.25, ge=0.0, le=0.9)
    clip_pos_len: int = field(128, ge=1, le=4096)  # rows of the clip position table (the original allocates 128, uses 32)
    attention_num: int = field(8, ge=1, le=32)  # 1 plain + (attention_num - 1) Gaussian branches, widths 2^-2 ...
    sft_factor: float = field(0.6, gt=0.0, le=1000.0)  # fusion softmax temperature
    num_registers: int = field(6, ge=1, le=1024)  # K
    timesteps: int = field(10, ge=2, le=10_000)  # T
    num_diffusion_layers: int = field(2, ge=1, le=64)
    initializer_range: float = field(0.02, gt=0.0, le=1.0)
    clip_scale_w: float = field(0.6, ge=0.0, le=1000.0)
    frame_scale_w: float = field(0.4, ge=0.0, le=1000.0)
    perturbation_scale: float = field(0.1, ge=0.0, le=100.0)  # textual perturbation sampler
    single_query_pass: bool = False  # True: reuse the first query encoding (the original encodes queries twice)
    # ablations of the paper (all True/faithful by default)
    use_registers: bool = True
    use_diffusion: bool = True  # False: registers = the condition C, no denoising loop
    video_centric_init: bool = True  # False: start from N(0, I) (zeros at inference), fresh noise in training
    sinusoidal_time_embedding: bool = False  # True: keep the sinusoidal table (the original overwrites it)

    def validate(self, where: str) -> None:
        if self.hidden_size % self.n_heads:
            raise ConfigError(f"{where}: model.hidden_size={self.hidden_size} is not divisible by "
                              f"model.n_heads={self.n_heads} (expected hidden_size = a multiple of n_heads)")
        if self.clip_pos_len < self.map_size:
            raise ConfigError(f"{where}: model.clip_pos_len={self.clip_pos_len} is smaller than "
                              f"model.map_size={self.map_size} (expected clip_pos_len >= map_size)")
        if self.clip_scale_w + self.frame_scale_w <= 0:  # every score 0: every query would tie at rank 1
            raise ConfigError(f"{where}: model.clip_scale_w + model.frame_scale_w is 0 (expected a positive sum)")


@dataclass
class DreamPRVRLossConfig(LossConfig):
    # weights of the terms (the original's loss_factor, in its order); the two triplet terms have weight 1
    clip_nce_weight: float = field(0.02, ge=0.0, le=1000.0)
    frame_nce_weight: float = field(0.04, ge=0.0, le=1000.0)
    query_diversity_weight: float = field(0.003, ge=0.0, le=1000.0)
    query_similarity_preservation_weight: float = field(0.002, ge=0.0, le=1000.0)
    kl_weight: float = field(1e-4, ge=0.0, le=1000.0)
    diffusion_weight: float = field(1e-3, ge=0.0, le=1000.0)
    # query diversity (the original's neg_factor): margin, alpha, lambda
    diversity_margin: float = field(0.2, ge=-2.0, le=2.0)  # on cosine similarities
    diversity_alpha: float = field(32.0, gt=0.0, le=256.0)
    diversity_lambda: float = field(1.0, ge=0.0, le=16.0)
    similarity_tau: float = field(0.01, gt=0.0, le=100.0)  # query similarity preservation temperature (deterministic_tau)
    margin: float = field(0.2, ge=0.0, le=2.0)  # triplet ranking margin
    hard_pool_size: int = field(20, ge=1, le=100_000)
    textual_structure: str = field("both", choices=("both", "qdl", "qsp", "none"))  # ablation of the TSL losses

    def validate(self, where: str) -> None:
        # exp(alpha (cos + margin)) with cos <= 1 must stay finite in float32 (exp(88) overflows)
        if self.diversity_alpha * (1 + self.diversity_margin) > 80:
            raise ConfigError(f"{where}: loss.diversity_alpha * (1 + loss.diversity_margin) = "
                              f"{self.diversity_alpha * (1 + self.diversity_margin):g} (expected <= 80, or the "
                              "query diversity loss overflows float32)")
