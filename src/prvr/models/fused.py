"""Fused pieces of the hot path: cheap dropout masks and a ReLU+dropout that keeps one tensor for backward.

Dropout here zeroes elements but does *not* rescale by 1/(1-p): callers fold that factor into the next
matmul (its `alpha`), which costs nothing, and the result equals standard inverted dropout.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

_MASK_BITS = 15
_reference = os.environ.get("PRVR_REFERENCE_PATH", "") not in ("", "0")


def fused_enabled() -> bool:
    """False when the plain reference path is asked for (PRVR_REFERENCE_PATH=1, or `reference_path()`): then the
    models run their textbook per-branch blocks with standard dropout, no stacked weights or folded projections."""
    return not _reference


@contextlib.contextmanager
def reference_path(enabled: bool = True) -> Iterator[None]:
    """Run the plain reference path inside the block (tests compare it with the fused one)."""
    global _reference
    before, _reference = _reference, enabled
    try:
        yield
    finally:
        _reference = before  # CPU masks: p resolved to 1/32768 (p_eff = round(p * 2^15) / 2^15)


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Bool mask, each element True (= dropped) with probability p.

    On CPU, one 31-bit draw feeds two elements (the low 15 bits of each 16-bit half), twice as fast as
    torch.rand; elsewhere torch.rand.
    """
    if device.type != "cpu":
        return torch.rand(shape, device=device) < p
    n = 1
    for s in shape:
        n *= s
    words = torch.empty((n + 1) // 2, dtype=torch.int32, device=device).random_()  # uniform in [0, 2^31)
    halves = words.view(torch.int16)[:n].bitwise_and_((1 << _MASK_BITS) - 1)  # uniform in [0, 2^15)
    return (halves < round(p * (1 << _MASK_BITS))).view(shape)


def drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero elements with probability p, no rescaling (see module doc). Identity when not training."""
    if not training or p == 0.0:
        return x
    return x.masked_fill(drop_mask(x.shape, p, x.device), 0.0)


def dropout_scale(p: float, training: bool) -> float:
    return 1.0 / (1.0 - p) if training and p > 0.0 else 1.0


class _ReluDrop(torch.autograd.Function):
    """y = relu(x) * mask. Backward only needs y: dy/dx = [y > 0] (y > 0 iff kept and x > 0)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, training: bool):
        y = torch.relu(x)
        if training and p > 0.0:
            y.masked_fill_(drop_mask(y.shape, p, y.device), 0.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, y, 0.0), None, None  # grad where y > 0, else 0: one pass


def relu_drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """relu then (unscaled) dropout, saving a single tensor for backward."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        y = x.relu_() if not torch.is_grad_enabled() else torch.relu(x)  # in place when nothing is recorded
        return drop(y, p, training)
    return _ReluDrop.apply(x, p, training)


class _StackedLayerNorm(torch.autograd.Function):
    """y[a] = LN(x[a]) * weight[a] + bias[a] for x (A, M, D); keeps only the normalised input for backward
    (autograd would keep both the input and the normalised tensor)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        mean = x.mean(dim=-1, keepdim=True)
        xc = x - mean
        rstd = torch.rsqrt(xc.pow(2).mean(dim=-1, keepdim=True) + eps)  # (A, M, 1)
        xhat = xc.mul_(rstd)
        ctx.save_for_backward(xhat, rstd, weight)
        return torch.addcmul(bias[:, None], xhat, weight[:, None])

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, weight = ctx.saved_tensors
        dw = (dy * xhat).sum(dim=1)
        db = dy.sum(dim=1)
        g = dy * weight[:, None]  # (A, M, D)
        dx = g - g.mean(dim=-1, keepdim=True) - xhat * (g * xhat).mean(dim=-1, keepdim=True)
        return dx.mul_(rstd), dw, db, None


def stacked_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """x (A, M, D), weight/bias (A, D): a separate affine LayerNorm per leading index."""
    return _StackedLayerNorm.apply(x, weight, bias, eps)
