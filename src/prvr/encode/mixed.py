"""bf16 where it is safe in a transformer tower: its feed-forward (`mlp`) blocks only.

Measured on a trained image tower (bench/bf16_agreement.py, tests/encode/test_bf16.py): under whole-model bf16
autocast the attention is what moves scores (bf16 queries and keys round the attention logits before the softmax);
the feed-forward blocks, two thirds of a ViT layer's FLOPs, add a small error to a residual stream kept in fp32.
So only they run in bf16: score error std 2e-4 instead of 7e-4, and on this CPU faster than whole-model autocast
(which also rounds the attention and casts around every norm).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prvr.device import bf16_autocast


class Bf16FeedForward(torch.nn.Module):
    """`inner` under bf16 autocast when `on()`, its output back in float32 (the residual stream stays fp32)."""

    def __init__(self, inner: torch.nn.Module, on: Callable[[], bool]):
        super().__init__()
        self.inner, self.on = inner, on

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.on():
            return self.inner(hidden)
        with bf16_autocast(hidden.device, True):
            return self.inner(hidden).float()


def wrap_feed_forward(model: torch.nn.Module, on: Callable[[], bool]) -> int:
    """Wrap every submodule named `mlp` (the feed-forward block of CLIP, SigLIP, ViT, DINOv2 layers in
    transformers) in place; returns how many were wrapped."""
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if name == "mlp" and not isinstance(child, Bf16FeedForward)]
    for parent, name in targets:
        setattr(parent, name, Bf16FeedForward(getattr(parent, name), on))
    return len(targets)
