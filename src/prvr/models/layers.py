"""Shared building blocks of the PRVR models (MS-SL / GMMFormer / HLFormer / DreamPRVR family)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prvr.models.fused import drop, dropout_scale, fused_enabled, relu_drop, stacked_layer_norm

MASK_LOGIT = -10000.0  # added to the logits of masked keys, as in the original


class Projection(nn.Module):
    """Input projection: LayerNorm(in) -> Dropout -> Linear(in, out) -> ReLU."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(self.drop(self.norm(x))))


class PositionalEncoding(nn.Module):
    """Learned position table added, then LayerNorm and Dropout."""

    def __init__(self, max_len: int, dim: int, dropout: float):
        super().__init__()
        self.table = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.table.num_embeddings:
            raise ValueError(f"sequence of {length} positions exceeds the table of {self.table.num_embeddings}")
        return self.drop(self.norm(x + self.table.weight[:length]))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with Q/K/V projections and no output projection.

    `logit_scale` (Lq, Lk) multiplies the raw scaled logits (the Gaussian prior) before masking.
    `key_mask` (B, Lk) or (B, Lq, Lk), 1 = attend.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None,
                logit_scale: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-2] == 1 and logit_scale is None and fused_enabled():
            return self._single_query(x, context, key_mask)
        q = _heads(self.query(x), self.n_heads)  # (B, h, Lq, dh)
        k = _heads(self.key(context), self.n_heads)  # (B, h, Lk, dh)
        v = _heads(self.value(context), self.n_heads)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, Lq, Lk)
        if logit_scale is not None:
            logits = logits * logit_scale
        if key_mask is not None:
            logits = logits + _additive_mask(key_mask)
        attn = self.drop(logits.softmax(dim=-1))
        return _merge_heads(attn @ v)  # (B, Lq, D)

    def _single_query(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """One query row (the fusion's weight token): fold the key and value projections into the query side
        instead of projecting every context row. Per head, q·(W_k c + b_k) = (W_k^T q)·c + q·b_k (the last term is
        the same for every key; kept so b_k gets its gradient, zero up to rounding, as in the plain form) and
        Σ α (W_v c + b_v) = W_v (Σ α c) + b_v Σ α. Equal up to rounding; (Lk·D²) becomes (h·Lk·D)."""
        B, _, D = x.shape
        h = self.n_heads
        dh = D // h
        q = self.query(x).view(B, h, dh)  # (B, h, dh)
        qk = torch.einsum("bhe,hed->bhd", q, self.key.weight.view(h, dh, D))  # (B, h, D)
        qb = (q * self.key.bias.view(h, dh)).sum(dim=-1, keepdim=True)  # (B, h, 1)
        logits = (qk @ context.transpose(1, 2) + qb) / math.sqrt(dh)  # (B, h, Lk)
        if key_mask is not None:
            logits = logits + _additive_mask(key_mask)[:, 0]
        attn = self.drop(logits.softmax(dim=-1))  # (B, h, Lk), the same dropout draws as (B, h, 1, Lk)
        pooled = attn @ context  # (B, h, D)
        out = torch.einsum("bhd,hed->bhe", pooled, self.value.weight.view(h, dh, D))  # (B, h, dh)
        out = out + self.value.bias.view(h, dh) * attn.sum(dim=-1, keepdim=True)
        return out.reshape(B, 1, D)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class AttentionBlock(nn.Module):
    """Post-norm transformer layer: x1 = LN(x + Drop(MHA)), out = LN(x1 + Drop(FFN(x1))).

    With `context` it is a cross-attention block (queries from x, keys/values from context).
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, ffn_mult: int = 4):
        super().__init__()
        self.attn = MultiHeadAttention(dim, n_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dim * ffn_mult, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                logit_scale: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(x, x if context is None else context, key_mask, logit_scale)
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.drop(self.ffn(x)))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (n_heads, -1)).transpose(-2, -3)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -3).flatten(-2)


def _additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, Lk) or (B, Lq, Lk) 0/1 mask -> additive logits broadcastable to (B, h, Lq, Lk)."""
    if mask.dim() == 2:
        mask = mask[:, None, :]
    return (1.0 - mask[:, None].to(torch.float32)) * MASK_LOGIT


def gaussian_kernel(length: int, width: float) -> torch.Tensor:
    """(L, L) Gaussian prior of width w: centre i/L, position j/(L-1), sigma = max(w, 0.01)/9, row max = 1."""
    centre = torch.arange(length, dtype=torch.float32)[:, None] / length  # (L, 1)
    position = torch.linspace(0, 1, length, dtype=torch.float32)[None, :]  # (1, L)
    sigma = max(width, 0.01) / 9
    g = torch.exp(-((position - centre) ** 2) / (2 * sigma**2))  # (L, L)
    return g / g.max(dim=-1, keepdim=True).values


class StackedAttentionBlocks(nn.Module):
    """A parallel bank of AttentionBlocks run as one batched pass over stacked weights.

    Each block keeps its own parameters (so state dicts stay one module per branch); forward stacks them
    and runs all branches with batched matmuls: (A, B, L, D) out for A branches.
    """

    def __init__(self, n_blocks: int, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(AttentionBlock(dim, n_heads, dropout) for _ in range(n_blocks))
        self.n_heads = n_heads
        self.dropout = dropout

    def _stack(self, getter) -> torch.Tensor:
        return torch.stack([getter(b) for b in self.blocks])

    def attention_core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logit_scale: torch.Tensor | None,
                       key_mask: torch.Tensor | None) -> torch.Tensor:
        """q (A, B, h, Lq, dh), k, v (A, B, h, Lk, dh) -> softmax(q k^T / sqrt(dh) * prior + mask), dropped, x v
        (A, B, h, Lq, dh)."""
        dh = q.shape[-1]
        logits = q @ k.transpose(-1, -2)  # (A, B, h, Lq, Lk)
        if logit_scale is not None:
            logits = logits * (logit_scale[:, None, None] / math.sqrt(dh))
        else:
            logits = logits / math.sqrt(dh)
        if key_mask is not None:
            logits = logits + _additive_mask(key_mask)
        return drop(logits.softmax(dim=-1), self.dropout, self.training) @ v

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None,
                logit_scale: torch.Tensor | None) -> torch.Tensor:
        """x (B, Lq, D) queries, context (B, Lk, D) keys/values, key_mask (B, Lk), logit_scale (A, Lq, Lk)
        -> (A, B, Lq, D)."""
        if not torch.is_grad_enabled() or not fused_enabled():  # inference: plain blocks are faster than stacking
            return torch.stack([blk(x, key_mask, context, None if logit_scale is None else logit_scale[a])
                                for a, blk in enumerate(self.blocks)])
        return self.final_norm(self.before_final_norm(x, context, key_mask, logit_scale))

    def final_norm(self, z: torch.Tensor) -> torch.Tensor:
        """The blocks' last LayerNorm (fused path): (A, B, L, D) residual sums -> (A, B, L, D)."""
        st = self._stack
        y = stacked_layer_norm(z.flatten(1, 2), st(lambda b: b.norm2.weight), st(lambda b: b.norm2.bias),
                               self.blocks[0].norm2.eps)
        return y.view(z.shape)

    def before_final_norm(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None,
                          logit_scale: torch.Tensor | None) -> torch.Tensor:
        """The fused blocks up to their last LayerNorm -> residual sums (A, B, Lq, D). A caller recomputing the bank
        in backward checkpoints this part and keeps the norm's (A, B, Lq, D) activations: the recompute then skips
        the second feed-forward GEMM, the norm and what follows the bank (a third of the bank's FLOPs)."""
        A, h, p, tr = len(self.blocks), self.n_heads, self.dropout, self.training
        B, Lq, D = x.shape
        Lk = context.shape[1]
        st = self._stack
        # one GEMM for Q of all branches over the query rows, one for K, V over the whole context
        wq, bq = st(lambda b: b.attn.query.weight), st(lambda b: b.attn.query.bias)  # (A, D, D), (A, D)
        wkv = torch.cat([st(lambda b: b.attn.key.weight), st(lambda b: b.attn.value.weight)])  # (2A, D, D)
        bkv = torch.cat([st(lambda b: b.attn.key.bias), st(lambda b: b.attn.value.bias)])  # (2A, D)
        q = torch.addmm(bq.flatten(), x.reshape(B * Lq, D), wq.flatten(0, 1).T)  # (B*Lq, A*D)
        kv = torch.addmm(bkv.flatten(), context.reshape(B * Lk, D), wkv.flatten(0, 1).T)  # (B*Lk, 2A*D)
        q = q.view(B, Lq, A, h, D // h).permute(2, 0, 3, 1, 4)  # (A, B, h, Lq, dh)
        k, v = (t.permute(2, 0, 3, 1, 4) for t in kv.view(B, Lk, 2, A, h, D // h).unbind(2))  # (A, B, h, Lk, dh)
        o = self.attention_core(q, k, v, logit_scale, key_mask)  # (A, B, h, Lq, dh)
        a = o.permute(0, 1, 3, 2, 4).reshape(A, B * Lq, D)  # (A, B*Lq, D)
        y = torch.add(x.reshape(1, B * Lq, D), drop(a, p, tr), alpha=dropout_scale(p, tr) ** 2)
        y = stacked_layer_norm(y, st(lambda b: b.norm1.weight), st(lambda b: b.norm1.bias), self.blocks[0].norm1.eps)
        hdn = torch.baddbmm(st(lambda b: b.ffn.fc1.bias)[:, None], y, st(lambda b: b.ffn.fc1.weight).transpose(1, 2))
        hdn = relu_drop(hdn, p, tr)  # (A, B*Lq, 4D)
        w2 = st(lambda b: b.ffn.fc2.weight) * dropout_scale(p, tr)  # dropout's 1/(1-p) on the small weight
        f = torch.baddbmm(st(lambda b: b.ffn.fc2.bias)[:, None], hdn, w2.transpose(1, 2))
        return torch.add(y, drop(f, p, tr), alpha=dropout_scale(p, tr)).view(A, B, Lq, D)


class BranchFusion(nn.Module):
    """Per-position learned weights over the A branch outputs (GMMFormer-v2 style, mean weight token)."""

    def __init__(self, dim: int, length: int, n_heads: int, dropout: float, temperature: float):
        super().__init__()
        self.cross_attn = AttentionBlock(dim, n_heads, dropout, ffn_mult=1)
        self.hidden = nn.Linear(dim, dim)
        self.logits = nn.Linear(dim, length)
        self.drop = nn.Dropout(dropout)
        self.temperature = temperature

    def forward(self, outputs: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """outputs (A, B, L, D) -> (B, L, D)."""
        return torch.einsum("bal,abld->bld", self.branch_weights(outputs, key_mask), outputs)

    def branch_weights(self, outputs: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """outputs (A, B, L, D) -> per-position weights over the branches (B, A, L), summing to 1 over A."""
        A, B, L, D = outputs.shape
        summary = outputs.mean(dim=(0, 2))[:, None]  # (B, 1, D) weight token, padding included
        ctx = outputs.reshape(A * B, L, D)
        mask = None if key_mask is None else key_mask.repeat(A, 1)  # (A*B, L)
        u = self.cross_attn(summary.repeat(A, 1, 1), key_mask=mask, context=ctx)  # (A*B, 1, D)
        u = u.view(A, B, D).transpose(0, 1)  # (B, A, D)
        w = self.logits(self.drop(torch.relu(self.hidden(u))))  # (B, A, L)
        return (w / self.temperature).softmax(dim=1)  # over branches
