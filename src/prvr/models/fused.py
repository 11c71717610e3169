"""Fused pieces of the hot path: cheap dropout masks and a ReLU+dropout that keeps one tensor for backward.

Dropout here zeroes elements but does *not* rescale by 1/(1-p): callers fold that factor into the next
matmul (its `alpha`), which costs nothing, and the result equals standard inverted dropout.
"""

from __future__ import annotations

import torch

_MASK_BITS = 15  # CPU masks: p resolved to 1/32768 (p_eff = round(p * 2^15) / 2^15)


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
        return torch.where(y > 0, grad, 0.0), None, None


def relu_drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """relu then (unscaled) dropout, saving a single tensor for backward."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        y = torch.relu(x)
        return drop(y, p, training)
    return _ReluDrop.apply(x, p, training)
