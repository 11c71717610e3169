"""Holmes: Gaussian-mixture attention encoders at clip and frame scale (the HLFormer / DreamPRVR skeleton without
registers), scored by a pooled query or, in the multi-query form, by weighted query tokens at frame scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from prvr.models.base import QueryRepr
from prvr.models.family import SETS, ClipFrameModel, init_family_weights
from prvr.models.fused import fused_enabled
from prvr.models.holmes.config import HolmesConfig
from prvr.models.layers import (
    AttentionBlock,
    BranchFusion,
    PositionalEncoding,
    Projection,
    StackedAttentionBlocks,
    gaussian_kernel,
)
from prvr.models.losses import max_similarity


@dataclass
class TrainOutputs:
    """What Holmes' loss needs from one training forward pass: tokens only, per query or per video, so distributed
    training can gather them; the (N, B) score matrices are made from them in the loss (`scores`)."""

    # what distributed training gathers across processes: field -> (videos | queries, batch dimension)
    batch_dims: ClassVar[dict[str, tuple[str, int]]] = {
        "query": ("queries", 0), "query_second": ("queries", 0), "clip": ("videos", 0), "frame": ("videos", 0),
        "frame_mask": ("videos", 0), "query_tokens": ("queries", 0), "token_weights": ("queries", 0),
        "token_weights_raw": ("queries", 0)}

    query: torch.Tensor  # (N, D) pooled query of the scoring pass
    query_second: torch.Tensor  # (N, D) second pass (the original encodes twice): POT pseudo labels, query diversity
    clip: torch.Tensor  # (B, Kc, D) clip-scale video tokens
    frame: torch.Tensor  # (B, F, D) frame-scale video tokens, zero at padded positions
    frame_mask: torch.Tensor  # (B, F)
    query_tokens: torch.Tensor | None = None  # (N, Lq, D) multi form: the frame branch's query tokens
    token_weights: torch.Tensor | None = None  # (N, Lq) multi form: weights of the normalised tokens
    token_weights_raw: torch.Tensor | None = None  # (N, Lq) multi form: weights of the raw tokens

    def scores(self) -> ScoreViews:
        """The four (N, B) score matrices of the loss: max cosine and max dot product over clips, and over frames
        (multi form: weighted over query tokens)."""
        clip = max_similarity(self.query, self.clip, normalize=True)
        clip_raw = max_similarity(self.query, self.clip, normalize=False)
        if self.query_tokens is None:
            frame = max_similarity(self.query, self.frame, normalize=True)
            frame_raw = max_similarity(self.query, self.frame, normalize=False)
        else:
            frame = weighted_token_max(F.normalize(self.query_tokens, dim=-1), self.token_weights,
                                       F.normalize(self.frame, dim=-1))
            frame_raw = weighted_token_max(self.query_tokens, self.token_weights_raw, self.frame)
        return ScoreViews(clip, clip_raw, frame, frame_raw)


class ScoreViews(NamedTuple):
    clip: torch.Tensor  # (N, B) max cosine over clips
    clip_raw: torch.Tensor  # (N, B) max dot product (the NCE terms)
    frame: torch.Tensor  # (N, B) max cosine over frames (multi: weighted over query tokens)
    frame_raw: torch.Tensor  # (N, B)


def weighted_token_max(tokens: torch.Tensor, weights: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Multi form's frame score: sum over query tokens t of w_t * max_f <q_t, frame_f>. tokens (N, Lq, D), weights
    (N, Lq), frames (B, F, D) -> (N, B). Padded frames are zero vectors, so they enter the max with 0, as in the
    original."""
    best = torch.einsum("ntd,bfd->nbtf", tokens, frames).max(dim=-1).values  # (N, B, Lq)
    return torch.einsum("nbt,nt->nb", best, weights)


def branch_widths(attention_num: int) -> list[float | None]:
    """Branch 0 plain, then Gaussian widths 2^-1, 2^0, ... (0.5 ... 32 for 8 branches)."""
    return [None] + [2.0**k for k in range(-1, attention_num - 2)]


class GaussianMixtureAttention(nn.Module):
    """The DyGMM block: A parallel self-attention branches over a fixed-length sequence (L = 32 clips or 128 frames),
    one plain and the rest with a multiplicative Gaussian prior on the logits, mixed per position by learned weights
    (a cross-attention from the mean of all branch outputs, padded positions included)."""

    def __init__(self, dim: int, length: int, n_heads: int, dropout: float, attention_num: int, temperature: float):
        super().__init__()
        self.length = length
        self.recompute_videos = 0  # > 0: keep no branch activations, recompute them in backward, so many videos at a time
        self.branches = StackedAttentionBlocks(attention_num, dim, n_heads, dropout)
        self.fusion = BranchFusion(dim, length, n_heads, dropout, temperature)
        ones = torch.ones(length, length)
        kernels = [ones if w is None else gaussian_kernel(length, w) for w in branch_widths(attention_num)]
        self.register_buffer("gaussian", torch.stack(kernels), persistent=False)  # (A, L, L)

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L, D), key_mask (B, L) or None -> (B, L, D)."""
        if tokens.shape[1] != self.length:
            raise ValueError(f"expected {self.length} tokens, got {tokens.shape[1]}")
        n = self.recompute_videos
        if not n or not torch.is_grad_enabled():
            return self._attend(tokens, key_mask)
        # activation checkpointing over chunks of videos: backward recomputes one chunk at a time (same dropout
        # masks: the RNG state is replayed), so the branch activations never exist for the whole batch
        if not fused_enabled():
            return torch.cat([checkpoint(self._attend, tokens[i:i + n], None if key_mask is None else key_mask[i:i + n],
                                         use_reentrant=False) for i in range(0, len(tokens), n)])
        # fused: the bank's last norm and the fusion run outside the checkpoint and keep their activations (3 MB a
        # video at frame scale), so the recompute stops before the bank's second feed-forward GEMM
        z = torch.cat([checkpoint(self.branches.before_final_norm, tokens[i:i + n], tokens[i:i + n],
                                  None if key_mask is None else key_mask[i:i + n], self.gaussian, use_reentrant=False)
                       for i in range(0, len(tokens), n)], dim=1)  # (A, B, L, D)
        return self.fusion(self.branches.final_norm(z), key_mask)

    def _attend(self, tokens: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        outputs = self.branches(tokens, tokens, key_mask, self.gaussian)  # (A, B, L, D)
        return self.fusion(outputs, key_mask)


class TokenWeights(nn.Module):
    """Importance of each query token (multi form): softmax over real tokens of Linear -> ReLU -> Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (N, Lq, D), mask (N, Lq) -> weights (N, Lq), 0 at padded tokens."""
        logits = self.out(F.relu(self.hidden(tokens))).squeeze(-1)  # (N, Lq)
        return logits.masked_fill(mask == 0, float("-inf")).softmax(dim=-1)


class Holmes(ClipFrameModel):
    config_class = HolmesConfig
    cfg: HolmesConfig
    inference_videos = 8  # evaluation encodes 8 videos at a time (see ClipFrameModel.encode_videos)
    # its step in one heap peaks at 5.9 GB for 3.0 GB in use (128 videos): the chunked recompute's freed
    # activations fragment it; given back, 3.0 GB (bench/train_step.py; 50 against 40 CPU-s)
    training_keeps_freed_memory = False

    def __init__(self, cfg: HolmesConfig):
        super().__init__(cfg)
        D, h, p_in, p = cfg.hidden_size, cfg.n_heads, cfg.input_drop, cfg.drop
        self.build_query_branch()
        if cfg.query_form == "multi":  # the frame branch's own query tokens (shares the position table)
            self.frame_query_proj = Projection(cfg.text_dim, D, p_in)
            self.frame_query_encoder = AttentionBlock(D, h, p)
            self.token_weights = TokenWeights(D)
        # video branches
        self.clip_proj = Projection(cfg.visual_dim, D, p_in)
        self.clip_pos = PositionalEncoding(cfg.clip_pos_len, D, p_in)
        self.frame_proj = Projection(cfg.visual_dim, D, p_in)
        self.frame_pos = PositionalEncoding(cfg.max_ctx_l, D, p_in)
        branch = dict(n_heads=h, dropout=p, attention_num=cfg.attention_num, temperature=cfg.sft_factor)
        self.clip_branch = GaussianMixtureAttention(D, cfg.map_size, **branch)
        self.frame_branch = GaussianMixtureAttention(D, cfg.max_ctx_l, **branch)
        # In the authors' state dict, never used (the block computes its own weight token) and never updated; kept
        # so their checkpoints load one-to-one and the parameter count is theirs. Frozen: no optimiser state.
        self.weight_token = nn.Parameter(torch.randn(1, 1, D), requires_grad=False)
        self.reset_parameters()

    def set_recompute(self, videos: int) -> None:
        """Trade compute for memory in training (0: keep every activation; results are unchanged either way): the
        frame branch bank is recomputed up to its last norm in the backward pass, `videos` videos at a time, and
        the query branch (both passes) is recomputed whole. The clip bank (32 positions against the frames' 128)
        keeps its activations: recomputing it as well was measured on a 128-video step at more time (66.3
        against 59.5 CPU-s) and no less peak memory (5.6 GB against 5.1 GB).
        """
        self.frame_branch.recompute_videos = max(0, int(videos))
        self.recompute_queries = videos > 0

    def reset_parameters(self) -> None:
        """Linear/Embedding N(0, 0.02), biases 0, LayerNorm 1/0 over the whole model, as in the original."""
        init_family_weights(self, self.cfg.initializer_range)

    # ---------------------------------------------------------------- the contract
    def encode_queries(self, batch) -> QueryRepr:
        """single: the pooled query against both sets. multi: the pooled query against clips, then one row per
        query token against frames, weighted by the token weights of the normalised tokens."""
        query = self.query_embedding(batch.text, batch.text_mask)  # (N, D)
        if self.cfg.query_form == "single":
            return QueryRepr.single(query, SETS)
        tokens = self.frame_query_tokens(batch.text, batch.text_mask)  # (N, Lq, D)
        weights = self.token_weights(F.normalize(tokens, dim=-1), batch.text_mask)  # (N, Lq)
        N, Lq, _ = tokens.shape
        return QueryRepr(torch.cat([query[:, None], tokens], dim=1), torch.cat([weights.new_ones(N, 1), weights], 1),
                         ("clip",) + ("frame",) * Lq)

    def forward_train(self, batch) -> TrainOutputs:
        return self(batch.clip, batch.frames, batch.frame_mask, batch.text, batch.text_mask)

    # ---------------------------------------------------------------- query side
    def frame_query_tokens(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Multi form: the frame branch's query tokens (N, Lq, D), padded positions included."""
        return self.frame_query_encoder(self.query_pos(self.frame_query_proj(text)), key_mask=text_mask)

    def token_wise_scores(self, tokens: torch.Tensor, text_mask: torch.Tensor, frames: torch.Tensor,
                          normalize: bool) -> torch.Tensor:
        """Multi form's frame score (N, B), the token weights from the tokens as scored (normalised or raw)."""
        if normalize:
            tokens, frames = F.normalize(tokens, dim=-1), F.normalize(frames, dim=-1)
        return weighted_token_max(tokens, self.token_weights(tokens, text_mask), frames)

    # ---------------------------------------------------------------- video side
    def video_tokens(self, clip: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor):
        """clip (B, Kc, Dv), frames (B, F<=max_ctx_l, Dv), frame_mask (B, F) -> clip tokens (B, Kc, D), frame
        tokens (B, max_ctx_l, D) zero at padding, frame mask (B, max_ctx_l). The clip branch has no mask."""
        frames, frame_mask = self.pad_frames(frames, frame_mask)
        clip_out = self.clip_branch(self.clip_pos(self.clip_proj(clip)))  # (B, Kc, D)
        frame_out = self.frame_branch(self.frame_pos(self.frame_proj(frames)), frame_mask)  # (B, F, D)
        return clip_out, frame_out * frame_mask[..., None], frame_mask

    # ---------------------------------------------------------------- training
    def forward(self, clip, frames, frame_mask, text, text_mask) -> TrainOutputs:
        """Training pass, in the original's order: videos, the scoring query pass (and the frame query tokens with
        their weights), then a second query pass for POT and query diversity (`single_query_pass=True` reuses the
        first). The score matrices are the loss's (`TrainOutputs.scores`)."""
        clip_out, frame_out, frame_mask = self.video_tokens(clip, frames, frame_mask)
        query = self.query_embedding(text, text_mask)  # (N, D)
        multi = {}
        if self.cfg.query_form == "multi":
            tokens = self.frame_query_tokens(text, text_mask)  # (N, Lq, D)
            multi = dict(query_tokens=tokens, token_weights=self.token_weights(F.normalize(tokens, dim=-1), text_mask),
                         token_weights_raw=self.token_weights(tokens, text_mask))
        second = query if self.cfg.single_query_pass else self.query_embedding(text, text_mask)
        return TrainOutputs(query, second, clip_out, frame_out, frame_mask, **multi)
