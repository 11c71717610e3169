"""HLFormer (ICCV 2025): hybrid Euclidean and Lorentz attention over clips and frames, and a partial order
("text entails in video") preserved in hyperbolic space by the training loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prvr.models.family import ClipFrameModel, init_family_weights
from prvr.models.hlformer.attention import HLFormerBlock
from prvr.models.hlformer.config import HLFormerConfig
from prvr.models.hlformer.lorentz import LorentzManifold, exp_map0
from prvr.models.layers import PositionalEncoding, Projection


@dataclass
class TrainOutputs:
    query: torch.Tensor  # (N, D) first query pass: the similarity scores
    query_second: torch.Tensor  # (N, D) second pass (the original encodes twice): diversity and partial order
    clip: torch.Tensor  # (B, Kc, D) clip-scale video tokens
    frame: torch.Tensor  # (B, F, D) frame-scale video tokens, zero at padded positions
    frame_mask: torch.Tensor  # (B, F)
    curv: torch.Tensor  # () curvature of the hyperbolic space of the partial-order loss
    hyp_query: torch.Tensor  # (N, D) query points on that hyperboloid (space components)
    hyp_video: torch.Tensor  # (B, D) video points

    # what distributed training gathers across processes: field -> (videos | queries | shared, batch dimension);
    # "replicated" (the curvature) is the same on every process and is not gathered
    batch_dims: ClassVar[dict[str, tuple[str, int]]] = {
        "query": ("queries", 0), "query_second": ("queries", 0), "clip": ("videos", 0), "frame": ("videos", 0),
        "frame_mask": ("videos", 0), "curv": ("replicated", 0), "hyp_query": ("queries", 0), "hyp_video": ("videos", 0)}




class HLFormer(ClipFrameModel):
    config_class = HLFormerConfig
    cfg: HLFormerConfig
    inference_videos = 8  # evaluation encodes 8 videos at a time (see ClipFrameModel.encode_videos)

    def __init__(self, cfg: HLFormerConfig):
        super().__init__(cfg)
        D, h, p_in, p = cfg.hidden_size, cfg.n_heads, cfg.input_drop, cfg.drop
        self.manifold = LorentzManifold()  # shared by every Lorentz layer
        self.build_query_branch()
        # video branches: clip scale (glance) and frame scale (gaze)
        block = dict(n_heads=h, dropout=p, lorentz_dim=cfg.lorentz_dim, per_space=cfg.branches_per_space,
                     temperature=cfg.sft_factor, manifold=self.manifold, spaces=cfg.attention_spaces,
                     fusion=cfg.branch_fusion)
        self.clip_proj = Projection(cfg.visual_dim, D, p_in)
        self.clip_pos = PositionalEncoding(cfg.max_ctx_l, D, p_in)  # the original allocates max_ctx_l rows, uses 32
        self.clip_encoder = HLFormerBlock(D, cfg.map_size, **block)
        self.frame_proj = Projection(cfg.visual_dim, D, p_in)
        self.frame_pos = PositionalEncoding(cfg.max_ctx_l, D, p_in)
        self.frame_encoder = HLFormerBlock(D, cfg.max_ctx_l, **block)
        # video pooling and the hyperbolic space of the partial-order loss (training only)
        self.clip_pooling = nn.Linear(D, 1, bias=False)
        self.frame_pooling = nn.Linear(D, 1, bias=False)
        self.curv = nn.Parameter(torch.tensor(float(cfg.curv_init)).log(), requires_grad=cfg.learn_curv)
        self.textual_alpha = nn.Parameter(torch.tensor(D**-0.5).log())
        self.video_alpha = nn.Parameter(torch.tensor(D**-0.5).log())
        self.curv_range = (math.log(cfg.curv_init / 10), math.log(cfg.curv_init * 10))
        self.reset_parameters()

    def set_recompute(self, videos: int) -> None:
        """Trade compute for memory in training: recompute the branch banks' activations in the backward pass,
        `videos` videos at a time (0: keep them). Results are unchanged."""
        self.clip_encoder.recompute_videos = self.frame_encoder.recompute_videos = max(0, int(videos))

    def reset_parameters(self) -> None:
        """Every Linear/Embedding weight N(0, 0.02) and bias 0 (the Lorentz linear maps included), LayerNorm 1/0;
        the scalar parameters keep their constructor values. Applied over the whole model, as in the original."""
        init_family_weights(self, self.cfg.initializer_range)

    # ---------------------------------------------------------------- the contract
    def forward_train(self, batch) -> TrainOutputs:
        return self(batch.clip, batch.frames, batch.frame_mask, batch.text, batch.text_mask)

    # ---------------------------------------------------------------- encoders
    def video_tokens(self, clip: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor):
        """clip (B, Kc, Dv), frames (B, F<=max_ctx_l, Dv), frame_mask (B, F) -> clip tokens (B, Kc, D),
        frame tokens (B, max_ctx_l, D) zero at padding, frame mask (B, max_ctx_l)."""
        frames, frame_mask = self.pad_frames(frames, frame_mask)
        clip_out = self.clip_encoder(self.clip_pos(self.clip_proj(clip)))  # (B, Kc, D)
        frame_out = self.frame_encoder(self.frame_pos(self.frame_proj(frames)), frame_mask)  # (B, F, D)
        return clip_out, frame_out * frame_mask[..., None], frame_mask

    # ---------------------------------------------------------------- hyperbolic embeddings (training)
    @staticmethod
    def _attention_pool(tokens: torch.Tensor, scorer: nn.Linear) -> torch.Tensor:
        """Softmax over all positions (padding included, as in the original) -> (B, D)."""
        return torch.einsum("bl,bld->bd", scorer(tokens).squeeze(-1).softmax(dim=-1), tokens)

    def clamp_hyperbolic(self) -> None:
        """In place, at each training forward as in the original: curvature within [c0/10, 10 c0] (log scale) and
        the scales exp(alpha) <= 1 (so they never up-scale the norms)."""
        with torch.no_grad():
            self.curv.clamp_(*self.curv_range)
            self.textual_alpha.clamp_(max=0.0)
            self.video_alpha.clamp_(max=0.0)

    def hyperbolic(self, query: torch.Tensor, clip: torch.Tensor, frame: torch.Tensor):
        """-> curvature (), query points (N, D), video points (B, D) (space components, exponential map at 0)."""
        curv = self.curv.exp()
        hyp_query = exp_map0(query * self.textual_alpha.exp(), curv)
        video = (self._attention_pool(frame, self.frame_pooling) + self._attention_pool(clip, self.clip_pooling)) / 2
        return curv, hyp_query, exp_map0(video * self.video_alpha.exp(), curv)

    # ---------------------------------------------------------------- training
    def forward(self, clip, frames, frame_mask, text, text_mask) -> TrainOutputs:
        """Training pass: all the tensors the losses need. The original encodes the queries twice (different
        dropout masks); `single_query_pass=True` reuses the first pass."""
        clip_out, frame_out, frame_mask = self.video_tokens(clip, frames, frame_mask)
        query = self.query_embedding(text, text_mask)  # (N, D)
        second = query if self.cfg.single_query_pass else self.query_embedding(text, text_mask)
        self.clamp_hyperbolic()
        curv, hyp_query, hyp_video = self.hyperbolic(second, clip_out, frame_out)
        return TrainOutputs(query, second, clip_out, frame_out, frame_mask, curv, hyp_query, hyp_video)
