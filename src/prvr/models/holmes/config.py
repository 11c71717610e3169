"""Holmes' typed configs (model and loss); defaults are the authors' Charades-STA values (`src/Configs/cha.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prvr.config import LossConfig, ModelConfig, field
from prvr.errors import ConfigError


@dataclass
class HolmesConfig(ModelConfig):
    name: ClassVar[str] = "holmes"

    hidden_size: int = field(384, ge=1)  # D
    n_heads: int = field(4, ge=1)
    input_drop: float = field(0.25, ge=0.0, lt=1.0)
    drop: float = field(0.25, ge=0.0, lt=1.0)
    clip_pos_len: int = field(128, ge=1)  # rows of the clip position table (the original allocates 128, uses 32)
    attention_num: int = field(8, ge=1)  # 1 plain + (attention_num - 1) Gaussian branches, widths 2^-1 ...
    sft_factor: float = field(0.6, gt=0.0)  # branch fusion softmax temperature
    initializer_range: float = field(0.02, ge=0.0)
    clip_scale_w: float = field(0.6, ge=0.0)
    frame_scale_w: float = field(0.4, ge=0.0)
    # single: one pooled query vector for clips and frames (src/); multi: the "dual-query" form (multisrc/): the
    # frame score is a softmax-weighted sum over the tokens of a second query encoder of each token's best frame
    query_form: str = field("single", choices=("single", "multi"))
    single_query_pass: bool = False  # True: reuse the scoring pass for POT and query diversity (the original encodes twice)

    def validate(self, where: str) -> None:
        if self.hidden_size % self.n_heads:
            raise ConfigError(f"{where}: model.hidden_size={self.hidden_size} is not divisible by "
                              f"model.n_heads={self.n_heads}")
        if self.map_size > self.clip_pos_len:
            raise ConfigError(f"{where}: model.map_size={self.map_size} exceeds model.clip_pos_len={self.clip_pos_len}")


@dataclass
class HolmesLossConfig(LossConfig):
    # weights of the terms, the original's loss_factor in its order; the two triplet terms have weight 1
    clip_nce_weight: float = field(0.02, ge=0.0)
    frame_nce_weight: float = field(0.04, ge=0.0)
    query_diversity_weight: float = field(0.003, ge=0.0)
    intra_video_edl_weight: float = field(9e-4, ge=0.0)
    edl_weight: float = field(0.06, ge=0.0)  # inter-video evidential terms (frame + clip + combined views)
    consistency_weight: float = field(0.0, ge=0.0)  # degree of conflict between the views (multisrc's dc, weight 0)
    # query diversity (the original's neg_factor): margin, alpha, lambda
    diversity_margin: float = field(0.2, ge=-2.0, le=2.0)  # on cosine similarities
    diversity_alpha: float = field(32.0, gt=0.0)
    diversity_lambda: float = field(1.0, ge=0.0)
    margin: float = field(0.2, ge=0.0)  # triplet ranking margin
    hard_pool_size: int = field(20, ge=1)
    # evidential learning: evidence exp(tanh(s) / tau)
    edl_tau: float = field(0.08, gt=0.0)
    intra_video_edl_tau: float = field(0.08, gt=0.0)
    # partial optimal transport (query-clip pseudo labels): entropic scale, dustbin quantile, Sinkhorn iterations
    pot_scale: float = field(0.1, gt=0.0)
    pot_prompt_ratio: float = field(0.3, ge=0.0, le=1.0)
    sinkhorn_iterations: int = field(50, ge=1)
    # query identification (three-fold principle) and calibrated labels
    division_beta: float = field(0.3, ge=0.0, le=1.0)
    smooth_beta: float = field(0.2, ge=0.0, le=1.0)
    refine_start_epoch: int = field(20, ge=0)  # the original's warmup_epoch: refined labels + intra-video EDL from here
    # ablations of the paper (all on by default)
    inter_video_edl: bool = True  # evidential terms on the video scores
    combine_views: bool = True  # the Dempster-Shafer combination of the frame and clip views (a third EDL term)
    query_identification: bool = True  # after warm-up: pair division, smoothed labels for ambiguous queries
    intra_video_edl: bool = True  # after warm-up: query-clip evidence against the POT plan
    pot_dustbin: bool = True  # False: balanced optimal transport without the adaptive dustbin row
