"""The original optimisation: BERT-style Adam (no bias correction, decoupled weight decay added to the update,
per-parameter gradient clipping) with linear warm-up then linear decay to 0 over all steps."""

from __future__ import annotations

import torch
from torch import nn

from prvr.models.layers import PositionalEncoding, Projection


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters exempt from weight decay, by the originals' rule (name contains `bias`, `LayerNorm.bias` or
    `LayerNorm.weight`): every bias, and the norms the originals name `LayerNorm`, i.e. those of the input
    projections and positional encodings. Other LayerNorm gains are decayed, as there."""
    names = {n for n, _ in model.named_parameters() if "bias" in n.rsplit(".", 1)[-1]}  # GRU bias_ih_l0 too
    for prefix, m in model.named_modules():
        if isinstance(m, (Projection, PositionalEncoding)):
            names.update(f"{prefix}.norm.{n}" for n, _ in m.norm.named_parameters())
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = no_decay_names(model)
    return [
        {"params": [p for n, p in named if n not in exempt], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0},
    ]


def warmup_linear(progress: float, warmup: float) -> float:
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction; lr_t = lr * warmup_linear(step / t_total) with step counted from 0."""

    def __init__(self, params, lr: float, warmup: float, t_total: int, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        defaults = dict(lr=lr, warmup=warmup, t_total=t_total, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    def current_lr(self) -> float:
        g = self.param_groups[0]
        step = self.state.get(g["params"][0], {}).get("step", 0)
        return g["lr"] * warmup_linear(int(step) / g["t_total"], g["warmup"])

    @torch.no_grad()
    def step(self, closure=None):
        """Subnormal floats (below 1.2e-38: squares of the tiny gradients a leaky clamp passes, the second moments
        they feed) are flushed to zero during the update: on CPUs they take the slow path of every arithmetic
        instruction (HLFormer's update took 3-6x longer with them), and next to eps = 1e-6 they move no weight by
        more than 1e-30."""
        torch.set_flush_denormal(True)
        try:
            self._step()
        finally:
            torch.set_flush_denormal(False)

    def _step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if g["max_grad_norm"] > 0:  # clip each tensor separately (not a global norm)
                norms = torch._foreach_norm(grads)
                coefs = [torch.clamp(g["max_grad_norm"] / (n + 1e-6), max=1.0) for n in norms]
                torch._foreach_mul_(grads, coefs)
            for p in params:
                if not self.state[p]:
                    self.state[p].update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            ms = [self.state[p]["exp_avg"] for p in params]
            vs = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_lerp_(ms, grads, 1 - g["b1"])
            torch._foreach_mul_(vs, g["b2"])
            torch._foreach_addcmul_(vs, grads, grads, value=1 - g["b2"])
            update = torch._foreach_div(ms, torch._foreach_add(torch._foreach_sqrt(vs), g["eps"]))
            if g["weight_decay"] > 0:
                torch._foreach_add_(update, params, alpha=g["weight_decay"])
            step = int(self.state[params[0]]["step"])
            lr = g["lr"] * warmup_linear(step / g["t_total"], g["warmup"])
            torch._foreach_add_(params, update, alpha=-lr)
            for p in params:
                self.state[p]["step"] += 1


def make_optimizer(model: nn.Module, tc, steps_per_epoch: int) -> BertAdam:
    """BertAdam over the original's decay groups for a `TrainConfig`: t_total = steps per epoch x `tc.epochs` (the
    schedule's length, whatever `tc.max_epochs` stops at), warm-up `tc.lr_warmup_proportion` of it."""
    return BertAdam(param_groups(model, tc.weight_decay), lr=tc.lr, warmup=tc.lr_warmup_proportion,
                    t_total=steps_per_epoch * tc.epochs, max_grad_norm=tc.grad_clip)
