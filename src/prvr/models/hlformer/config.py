"""HLFormer's typed configs (model and loss); defaults are the authors' Charades-STA values (Configs/cha.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prvr.config import LossConfig, ModelConfig, field
from prvr.errors import ConfigError


@dataclass
class HLFormerConfig(ModelConfig):
    name: ClassVar[str] = "hlformer"

    hidden_size: int = field(384, ge=1)  # D
    n_heads: int = field(4, ge=1)  # Euclidean and Lorentz attention heads
    input_drop: float = field(0.25, ge=0.0, lt=1.0)
    drop: float = field(0.25, ge=0.0, lt=1.0)
    lorentz_dim: int = field(127, ge=1)  # space dimensions of the Lorentz model (points have lorentz_dim + 1)
    attention_num: int = field(8, ge=2)  # branches per HLFormer block: half Euclidean, half Lorentz
    sft_factor: float = field(0.6, gt=0.0)  # temperature of the mean-guided adaptive interaction (branch fusion)
    initializer_range: float = field(0.02, ge=0.0)
    clip_scale_w: float = field(0.7, ge=0.0)
    frame_scale_w: float = field(0.3, ge=0.0)
    curv_init: float = field(1.0, gt=0.0)  # curvature of the hyperbolic space of the partial-order loss is -curv
    learn_curv: bool = True
    single_query_pass: bool = False  # True: reuse the scores' query encoding (the original encodes queries twice)
    # ablations of the paper's components (the full model by default)
    attention_spaces: str = field("both", choices=("both", "euclidean", "lorentz"))  # which attention blocks
    branch_fusion: str = field("adaptive", choices=("adaptive", "mean"))  # MAIM, or a plain mean of the branches

    def validate(self, where: str) -> None:
        if self.hidden_size % self.n_heads:
            raise ConfigError(f"{where}: model.hidden_size={self.hidden_size} is not divisible by "
                              f"model.n_heads={self.n_heads}")
        if (self.lorentz_dim + 1) % self.n_heads:
            raise ConfigError(f"{where}: model.lorentz_dim + 1 = {self.lorentz_dim + 1} is not divisible by "
                              f"model.n_heads={self.n_heads} (each Lorentz head is a point with its own time axis)")
        if (self.lorentz_dim + 1) // self.n_heads < 2:
            raise ConfigError(f"{where}: model.lorentz_dim={self.lorentz_dim} leaves Lorentz heads without a "
                              f"space axis; use at least {2 * self.n_heads - 1}")
        if self.attention_num % 2:
            raise ConfigError(f"{where}: model.attention_num={self.attention_num} must be even (half Euclidean, "
                              f"half Lorentz branches)")

    @property
    def branches_per_space(self) -> int:
        return self.attention_num // 2


@dataclass
class HLFormerLossConfig(LossConfig):
    # weights of the terms (the original's loss_factor, in its order); the two triplet terms have weight 1
    clip_nce_weight: float = field(0.02, ge=0.0)
    frame_nce_weight: float = field(0.04, ge=0.0)
    query_diversity_weight: float = field(0.003, ge=0.0)
    partial_order_weight: float = field(1e-3, ge=0.0)
    # query diversity (the original's neg_factor): margin, alpha, lambda
    diversity_margin: float = field(0.2, ge=-2.0, le=2.0)  # on cosine similarities
    diversity_alpha: float = field(32.0, gt=0.0)
    diversity_lambda: float = field(1.0, ge=0.0)
    margin: float = field(0.2, ge=0.0)  # triplet ranking margin
    hard_pool_size: int = field(20, ge=1)
    min_radius: float = field(0.1, gt=0.0)  # entailment cones are left undefined inside this radius
    # ablations: drop a term entirely (the paper's L_div and L_pop)
    use_query_diversity: bool = True
    use_partial_order: bool = True
