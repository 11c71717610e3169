"""The HLFormer block: parallel Euclidean Gaussian attention blocks and Lorentz attention blocks over one token
sequence, fused per position by the mean-guided adaptive interaction module (MAIM)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from prvr.models.fused import drop, dropout_scale, fused_enabled, relu_drop, stacked_layer_norm
from prvr.models.hlformer.lorentz import LorentzManifold
from prvr.models.layers import BranchFusion, FeedForward, Projection, StackedAttentionBlocks

MASK_FILL = -1e18  # masked keys of the Lorentz attention (a fill, not an additive mask)


def branch_widths(n: int) -> list[float | None]:
    """Branch 0 global, then Gaussian widths 2, 4, 8, ... (the same for the Euclidean and the Lorentz blocks)."""
    return [None] + [2.0**i for i in range(1, n)]


def gaussian_prior(length: int, width: float) -> torch.Tensor:
    """(L, L) Gaussian prior, centre i/L, position j/(L-1), sigma = max(w, 0.01)/9, row max 1: `gaussian_kernel`
    evaluated as the HLFormer release does (the normal density, then divided by its row maximum). The values
    agree to 1 ulp; this form matches bit for bit, which matters because the Lorentz centroid's normalisation
    (a difference of squares of time and space) amplifies such differences about thirtyfold."""
    centre = torch.arange(length)[:, None] / length  # (L, 1)
    position = torch.linspace(0, 1, length)[None, :]  # (1, L)
    sigma = torch.full((length, 1), float(width)).clamp(min=1e-2) / 9
    g = 0.3989422804014327 / sigma * torch.exp(-((position - centre) ** 2) / (2 * sigma**2))
    return g / g.max(dim=-1, keepdim=True).values


def gaussian_kernels(length: int, n: int) -> torch.Tensor:
    """(n, L, L) multiplicative priors: ones for the global branch, Gaussians of widths 2, 4, ... after."""
    return torch.stack([torch.ones(length, length) if w is None else gaussian_prior(length, w)
                        for w in branch_widths(n)])


def heads_on_hyperboloid(y: torch.Tensor, scale: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y (..., heads, dh) -> Lorentz points per head: time sigmoid(y_0) e^scale + 1.1, the other coordinates rescaled
    so that -time^2 + |space|^2 = -k, as the original: space * sqrt((time^2 - k) / |space|^2). The original has no
    epsilon there: a head whose space part is zero or nearly (a row zeroed by ReLU and dropout, common at small
    widths) gives NaN or inf and, through the branch fusion's mean, NaN in the whole video. Here a head with
    |space|^2 below sqrt of the dtype's smallest normal number (1e-19 in float32) keeps a zero space part, and its
    gradient is zero; every other head is computed exactly as in the original."""
    time = y[..., :1].sigmoid() * scale.exp() + 1.1
    space = y[..., 1:]
    sq = space.pow(2).sum(dim=-1, keepdim=True)
    ok = sq > torch.finfo(y.dtype).tiny ** 0.5
    ratio = (time * time - k) / torch.where(ok, sq, torch.ones_like(sq))  # never divides by (nearly) zero
    return torch.cat([time, torch.where(ok, space * ratio.sqrt(), torch.zeros_like(space))], dim=-1)


def lorentz_logits(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(2 + 2 <q, k>_L) / scale + bias for q (..., Lq, d), k (..., Lk, d) -> (..., Lq, Lk)."""
    sign = torch.ones(q.shape[-1], dtype=q.dtype, device=q.device)
    sign[0] = -1.0  # <q, k>_L = (-q_0, q_s) . k
    return (2 + 2 * ((q * sign) @ k.transpose(-1, -2))) / scale + bias


class LorentzLinear(nn.Module):
    """Linear map of Lorentz points (..., n + 1) to `heads` points of n_out / heads coordinates each.

    Per head, the first output coordinate sets the time, sigmoid(y_0) e^scale + 1.1, and the other coordinates are
    rescaled onto the hyperboloid of that time. No bias (the original's layer)."""

    def __init__(self, dim: int, heads: int, dropout: float, manifold: LorentzManifold):
        super().__init__()
        self.heads = heads
        self.linear = nn.Linear(dim, dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(2.3))
        self.drop = nn.Dropout(dropout)
        self.manifold = manifold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, n + 1) -> (B, L, heads, (n + 1) / heads)."""
        y = self.linear(self.drop(x)).unflatten(-1, (self.heads, -1))
        return heads_on_hyperboloid(y, self.scale, self.manifold.k)


class LorentzMultiHeadAttention(nn.Module):
    """Attention between Lorentz points: logits (2 + 2<q, k>_L) / scale + bias (times a Gaussian prior), the
    output of each head is the weighted Lorentzian centroid of its values. Heads stay separate points."""

    def __init__(self, dim: int, heads: int, dropout: float, manifold: LorentzManifold):
        super().__init__()
        self.query = LorentzLinear(dim, heads, dropout, manifold)
        self.key = LorentzLinear(dim, heads, dropout, manifold)
        self.value = LorentzLinear(dim, heads, dropout, manifold)
        self.scale = nn.Parameter(torch.tensor([math.sqrt(dim)]))
        self.bias = nn.Parameter(torch.zeros(()))
        self.manifold = manifold  # (the original allocates an attention dropout it never applies)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, prior: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, n + 1) points, key_mask (B, L), prior (L, L) -> (B, L, n + 1): heads' points concatenated."""
        q, k, v = (f(x).transpose(1, 2) for f in (self.query, self.key, self.value))  # (B, h, L, dh)
        logits = lorentz_logits(q, k, self.scale, self.bias)  # (B, h, L, L)
        if prior is not None:
            logits = logits * prior
        if key_mask is not None:
            logits = logits.masked_fill(key_mask[:, None, None, :] == 0, MASK_FILL)
        out = LorentzManifold.midpoint(v, logits.softmax(dim=-1))  # (B, h, L, dh)
        return out.transpose(1, 2).flatten(2)


class LorentzAttentionBlock(nn.Module):
    """Euclidean tokens -> Lorentz points (projection, scale, exponential map) -> Lorentz attention -> back
    (logarithmic map, unscale, projection), then the post-norm residual and feed-forward of a transformer layer."""

    def __init__(self, dim: int, lorentz_dim: int, n_heads: int, dropout: float, manifold: LorentzManifold):
        super().__init__()
        self.in_proj = Projection(dim, lorentz_dim, dropout)
        self.scale_alpha = nn.Parameter(torch.tensor(lorentz_dim**-0.5).log())
        self.attn = LorentzMultiHeadAttention(lorentz_dim + 1, n_heads, dropout, manifold)
        self.out_proj = Projection(lorentz_dim, dim, dropout)
        self.manifold = manifold
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, 4 * dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def clamp_scale(self) -> None:
        """The original clamps scale_alpha <= 0 in place before every use (training and inference)."""
        with torch.no_grad():
            self.scale_alpha.clamp_(max=0.0)

    def lorentz_attention(self, x: torch.Tensor, key_mask: torch.Tensor | None, prior: torch.Tensor | None
                          ) -> torch.Tensor:
        scale = self.scale_alpha.exp()
        points = self.manifold.expmap0(self.in_proj(x) * scale)  # (B, L, n + 1)
        out = self.manifold.logmap0(self.attn(points, key_mask, prior))  # (B, L, n)
        return self.out_proj(out / scale)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None, prior: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.lorentz_attention(x, key_mask, prior)))
        return self.norm2(x + self.drop(self.ffn(x)))


class LorentzBranches(nn.Module):
    """A bank of Lorentz attention blocks over the same tokens (one global, the others with Gaussian priors).

    Each block keeps its own parameters (state dicts stay one module per branch, as in the original). In training
    the bank runs as one batched pass over stacked weights, with the cheap dropout masks and folded 1/(1-p) of
    `prvr.models.fused` and the stacked LayerNorm / ReLU+dropout that keep one tensor for backward; inference (and
    the reference path) runs the plain blocks."""

    def __init__(self, n_blocks: int, dim: int, lorentz_dim: int, n_heads: int, dropout: float,
                 manifold: LorentzManifold):
        super().__init__()
        self.blocks = nn.ModuleList(LorentzAttentionBlock(dim, lorentz_dim, n_heads, dropout, manifold)
                                    for _ in range(n_blocks))
        self.n_heads = n_heads  # (the manifold is the blocks': one more reference would add names to the state dict)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, priors: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), priors (A, L, L) (ones for the global branch) -> (A, B, L, D)."""
        if not torch.is_grad_enabled() or not fused_enabled():
            return torch.stack([blk(x, key_mask, None if a == 0 else priors[a]) for a, blk in enumerate(self.blocks)])
        return self.final_norm(self.before_final_norm(x, key_mask, priors))

    def _stack(self, getter) -> torch.Tensor:
        return torch.stack([getter(b) for b in self.blocks])

    def _projection(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """LayerNorm -> dropout -> linear -> ReLU of every branch's `name` projection: x (A or 1, M, d_in)."""
        st, p, tr = self._stack, self.dropout, self.training
        norm = getattr(self.blocks[0], name).norm
        if x.shape[0] == 1:  # the same input for every branch: normalise once, then each branch's affine
            h = torch.addcmul(st(lambda b: getattr(b, name).norm.bias)[:, None],
                              F.layer_norm(x, x.shape[-1:], eps=norm.eps), st(lambda b: getattr(b, name).norm.weight)[:, None])
        else:
            h = stacked_layer_norm(x, st(lambda b: getattr(b, name).norm.weight), st(lambda b: getattr(b, name).norm.bias),
                                   norm.eps)
        w = st(lambda b: getattr(b, name).linear.weight) * dropout_scale(p, tr)  # (A, d_out, d_in)
        return torch.baddbmm(st(lambda b: getattr(b, name).linear.bias)[:, None], drop(h, p, tr), w.transpose(1, 2)).relu()

    @staticmethod
    def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor,
                       key_mask: torch.Tensor | None) -> torch.Tensor:
        """Lorentz points q, k, v (A, B, h, L, dh), gain and shift (A, L, L) -> weighted centroids (A, B, h, L, dh) of
        softmax(<q, k>_L gain + shift, masked)."""
        sign = torch.ones(q.shape[-1], dtype=q.dtype, device=q.device)
        sign[0] = -1.0
        logits = torch.addcmul(shift[:, None, None], (q * sign) @ k.transpose(-1, -2), gain[:, None, None])
        if key_mask is not None:
            logits = logits.masked_fill(key_mask[:, None, None, :] == 0, MASK_FILL)
        return LorentzManifold.midpoint(v, logits.softmax(dim=-1))

    def before_final_norm(self, x: torch.Tensor, key_mask: torch.Tensor | None, priors: torch.Tensor) -> torch.Tensor:
        """The fused blocks up to their last LayerNorm -> residual sums (A, B, L, D) (see `StackedAttentionBlocks`)."""
        A, h, p, tr, st = len(self.blocks), self.n_heads, self.dropout, self.training, self._stack
        B, L, D = x.shape
        manifold = self.blocks[0].manifold
        M, k = B * L, manifold.k
        xf = x.reshape(1, M, D)
        scale = st(lambda b: b.scale_alpha).exp()[:, None, None]  # (A, 1, 1)
        points = manifold.expmap0(self._projection(xf, "in_proj") * scale)  # (A, M, n + 1)
        n1 = points.shape[-1]
        heads = []
        for name in ("query", "key", "value"):  # each Lorentz linear map drops its own input coordinates
            w = st(lambda b, name=name: getattr(b.attn, name).linear.weight) * dropout_scale(p, tr)  # (A, n+1, n+1)
            y = torch.bmm(drop(points, p, tr), w.transpose(1, 2)).view(A, B, L, h, n1 // h)
            s = st(lambda b, name=name: getattr(b.attn, name).scale)[:, None, None, None, None]
            heads.append(heads_on_hyperboloid(y, s, k).transpose(2, 3))  # (A, B, h, L, dh)
        q, kk, v = heads
        # ((2 + 2 <q, k>_L) / s + b) * prior as one fused pass: <q, k>_L * (2 prior / s) + (2 / s + b) prior
        two_s = 2 / st(lambda b: b.attn.scale)[:, :, None]  # (A, 1, 1)
        shift = (two_s + st(lambda b: b.attn.bias)[:, None, None]) * priors  # (A, L, L); the global prior is ones
        gain = two_s * priors  # (A, L, L)
        out = self.attention_core(q, kk, v, gain, shift, key_mask)  # (A, B, h, L, dh)
        out = manifold.logmap0(out.transpose(2, 3).reshape(A, M, n1)) / scale  # (A, M, n)
        out = self._projection(out, "out_proj")  # (A, M, D)
        # the transformer layer around it: post-norm residual, feed-forward (4 D)
        ds = dropout_scale(p, tr)
        blk = self.blocks[0]
        y = torch.add(xf, drop(out, p, tr), alpha=ds)
        y = stacked_layer_norm(y, st(lambda b: b.norm1.weight), st(lambda b: b.norm1.bias), blk.norm1.eps)
        hdn = torch.baddbmm(st(lambda b: b.ffn.fc1.bias)[:, None], y, st(lambda b: b.ffn.fc1.weight).transpose(1, 2))
        hdn = relu_drop(hdn, p, tr)  # (A, M, 4D)
        f = torch.baddbmm(st(lambda b: b.ffn.fc2.bias)[:, None], hdn, (st(lambda b: b.ffn.fc2.weight) * ds).transpose(1, 2))
        return torch.add(y, drop(f, p, tr), alpha=ds).view(A, B, L, D)

    def final_norm(self, z: torch.Tensor) -> torch.Tensor:
        """The blocks' last LayerNorm (fused path): (A, B, L, D) residual sums -> (A, B, L, D)."""
        st = self._stack
        y = stacked_layer_norm(z.flatten(1, 2), st(lambda b: b.norm2.weight), st(lambda b: b.norm2.bias),
                               self.blocks[0].norm2.eps)
        return y.view(z.shape)


class HLFormerBlock(nn.Module):
    """Euclidean Gaussian attention blocks and Lorentz attention blocks (widths global, 2, 4, ...) over a fixed-length
    sequence (32 clips or 128 frames), fused per position. `spaces` and `fusion` are the paper's ablations."""

    def __init__(self, dim: int, length: int, n_heads: int, dropout: float, lorentz_dim: int, per_space: int,
                 temperature: float, manifold: LorentzManifold, spaces: str = "both", fusion: str = "adaptive"):
        super().__init__()
        self.length = length
        self.recompute_videos = 0  # > 0: keep no branch activations in training, recompute them so many videos at a time
        self.euclidean = StackedAttentionBlocks(per_space, dim, n_heads, dropout) if spaces != "lorentz" else None
        self.lorentz = (LorentzBranches(per_space, dim, lorentz_dim, n_heads, dropout, manifold)
                        if spaces != "euclidean" else None)
        self.fusion = BranchFusion(dim, length, n_heads, dropout, temperature) if fusion == "adaptive" else None  # MAIM
        self.register_buffer("priors", gaussian_kernels(length, per_space), persistent=False)  # (A_s, L, L)

    def clamp_parameters(self) -> None:
        if self.lorentz is not None:
            for blk in self.lorentz.blocks:
                blk.clamp_scale()

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L, D), key_mask (B, L) or None -> (B, L, D)."""
        if tokens.shape[1] != self.length:
            raise ValueError(f"expected {self.length} tokens, got {tokens.shape[1]}")
        self.clamp_parameters()
        n = self.recompute_videos
        if not n or not torch.is_grad_enabled():
            return self._attend(tokens, key_mask)
        # activation checkpointing over chunks of videos: backward recomputes one chunk at a time (same dropout
        # masks: the RNG state is replayed), so the branch activations never exist for the whole batch
        if not fused_enabled():
            return torch.cat([checkpoint(self._attend, tokens[i:i + n], None if key_mask is None else key_mask[i:i + n],
                                         use_reentrant=False) for i in range(0, len(tokens), n)])
        # fused: the banks' last norms and the fusion run outside the checkpoint and keep their activations, so the
        # recompute stops before each bank's second feed-forward GEMM
        z = torch.cat([checkpoint(self._before_final_norms, tokens[i:i + n],
                                  None if key_mask is None else key_mask[i:i + n], use_reentrant=False)
                       for i in range(0, len(tokens), n)], dim=1)  # (A, B, L, D)
        return self._fuse(self._final_norms(z), key_mask)

    def _banks(self) -> list[nn.Module]:
        return [bank for bank in (self.euclidean, self.lorentz) if bank is not None]

    def _before_final_norms(self, tokens: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Fused training path: every bank up to its last norm -> (A, B, L, D), the banks in `_attend`'s order."""
        parts = [self.euclidean.before_final_norm(tokens, tokens, key_mask, self.priors)] if self.euclidean is not None else []
        if self.lorentz is not None:
            parts.append(self.lorentz.before_final_norm(tokens, key_mask, self.priors))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _final_norms(self, z: torch.Tensor) -> torch.Tensor:
        banks = self._banks()
        if len(banks) == 1:
            return banks[0].final_norm(z)
        sizes = [len(b.blocks) for b in banks]
        return torch.cat([b.final_norm(part) for b, part in zip(banks, z.split(sizes), strict=True)])

    def _fuse(self, outputs: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.fusion is None:
            return outputs.mean(dim=0)
        return self.fusion(outputs, key_mask)

    def _attend(self, tokens: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        outputs = []
        if self.euclidean is not None:
            outputs.append(self.euclidean(tokens, tokens, key_mask, self.priors))  # (A_s, B, L, D)
        if self.lorentz is not None:
            outputs.append(self.lorentz(tokens, key_mask, self.priors))
        outputs = outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # (A, B, L, D)
        return self._fuse(outputs, key_mask)
