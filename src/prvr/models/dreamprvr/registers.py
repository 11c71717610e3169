"""Register condition (learned queries over the mean clip encoding) and register-augmented Gaussian attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from prvr.models.layers import (
    AttentionBlock,
    BranchFusion,
    Projection,
    StackedAttentionBlocks,
    gaussian_kernel,
)


class RegisterCondition(nn.Module):
    """K learned query tokens cross-attend to the mean clip encoding E -> condition C (B, K, D)."""

    def __init__(self, num_registers: int, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, num_registers, dim))  # N(0, 1), kept by the global init
        self.cross_attn = AttentionBlock(dim, n_heads, dropout, ffn_mult=1)

    def forward(self, encoded_clips: torch.Tensor) -> torch.Tensor:
        q = self.queries.expand(encoded_clips.shape[0], -1, -1)  # (B, K, D)
        return self.cross_attn(q, context=encoded_clips)


def branch_widths(attention_num: int) -> list[float | None]:
    """Branch 0 plain, then Gaussian widths 2^-2, 2^-1, ... (0.25 ... 16 for 8 branches)."""
    return [None] + [2.0**k for k in range(-2, attention_num - 3)]


class RegisterGaussianAttention(nn.Module):
    """Register-augmented Gaussian attention over a fixed-length token sequence (L = 32 clips or 128 frames).

    Video tokens attend to all valid video tokens and all registers through A parallel blocks (one plain, the
    rest with a multiplicative Gaussian prior on video-to-video logits). Register outputs are never used, so
    only the L video rows are computed as queries (the original computes and discards the register rows).
    """

    def __init__(self, dim: int, length: int, n_heads: int, dropout: float, attention_num: int,
                 temperature: float, use_registers: bool = True):
        super().__init__()
        self.length = length
        self.use_registers = use_registers
        self.recompute_videos = 0  # > 0: keep no branch activations, recompute them in backward, so many videos at a time
        if use_registers:
            self.register_proj = Projection(dim, dim, dropout)
        self.branches = StackedAttentionBlocks(attention_num, dim, n_heads, dropout)
        self.fusion = BranchFusion(dim, length, n_heads, dropout, temperature)
        ones = torch.ones(length, length)
        kernels = [ones if w is None else gaussian_kernel(length, w) for w in branch_widths(attention_num)]
        self.register_buffer("gaussian", torch.stack(kernels), persistent=False)  # (A, L, L)

    def forward(self, tokens: torch.Tensor, registers: torch.Tensor | None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L, D), registers (B, K, D), key_mask (B, L) -> (B, L, D)."""
        B, L, _ = tokens.shape
        if L != self.length:
            raise ValueError(f"expected {self.length} tokens, got {L}")
        scale = self.gaussian
        context, mask = tokens, key_mask
        if self.use_registers:
            regs = self.register_proj(registers)  # (B, K, D)
            K = regs.shape[1]
            context = torch.cat([tokens, regs], dim=1)  # (B, L+K, D)
            scale = torch.cat([scale, scale.new_ones(scale.shape[0], L, K)], dim=-1)  # (A, L, L+K)
            if key_mask is not None:
                mask = torch.cat([key_mask, key_mask.new_ones(B, K)], dim=1)  # (B, L+K)
        n = self.recompute_videos
        if not n or not torch.is_grad_enabled():
            return self._attend(tokens, context, mask, scale, key_mask)
        # activation checkpointing over chunks of videos: backward recomputes one chunk at a time (same dropout
        # masks: the RNG state is replayed), so the branch activations never exist for the whole batch
        return torch.cat([
            checkpoint(self._attend, tokens[i:i + n], context[i:i + n], None if mask is None else mask[i:i + n],
                       scale, None if key_mask is None else key_mask[i:i + n], use_reentrant=False)
            for i in range(0, len(tokens), n)])

    def _attend(self, tokens, context, mask, scale, key_mask) -> torch.Tensor:
        outputs = self.branches(tokens, context, mask, scale)  # (A, B, L, D)
        return self.fusion(outputs, key_mask)
