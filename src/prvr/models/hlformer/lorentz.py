"""The Lorentz (hyperboloid) model of hyperbolic space as HLFormer uses it.

Two parametrisations meet here, as in the authors' code:

- inside the Lorentz attention blocks a point is the full vector x = (x_0, x_s) with -x_0^2 + |x_s|^2 = -k
  (time first; k = 1, a fixed constant held by `LorentzManifold`), mapped from and to the tangent space at the
  origin by `expmap0` / `logmap0`;
- the partial-order (entailment) loss works on space components only, on a hyperboloid of learned curvature -c
  (`exp_map0`, `half_aperture`, `oxy_angle`: entailment cones as in MERU).

The numerics follow the original exactly where they change results or gradients: the tangent norm in `expmap0`
is a square root of a *leaky* clamp (gradient x 1e-8 below 1e-9 instead of 0), `acosh` in `logmap0` clamps its
input at 1 (1 + 1e-8 in float32) and uses the derivative 1 / sqrt(max(x^2 - 1, 1e-9)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LEAK = 1e-8  # gradient factor outside a leaky clamp's range
EXP_MAX_NORM = 10.0  # tangent norms are clamped to this before sinh


class _LeakyClamp(torch.autograd.Function):
    """clamp(x, lo, hi) whose gradient outside [lo, hi] is multiplied by 1e-8 instead of zeroed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.save_for_backward(x.ge(lo) & x.le(hi))
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, grad * LEAK), None, None


def leaky_clamp(x: torch.Tensor, lo: float = -math.inf, hi: float = math.inf) -> torch.Tensor:
    return _LeakyClamp.apply(x, lo, hi)


class _Acosh(torch.autograd.Function):
    """acosh(max(x, 1)) = log(x + sqrt(max(x^2 - 1, 1e-9))), derivative 1 / sqrt(max(x^2 - 1, 1e-9))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(min=1.0 + 1e-8)  # = 1 in float32
        z = (x * x - 1.0).clamp(min=1e-9).sqrt()
        ctx.save_for_backward(z)
        return torch.log(x + z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        return grad / z


def acosh(x: torch.Tensor) -> torch.Tensor:
    return _Acosh.apply(x)


class LorentzManifold(nn.Module):
    """The hyperboloid -x_0^2 + |x_s|^2 = -k of the attention blocks. `k` (1) is a constant, not trained; one
    instance is shared by every layer computing on it (the authors' state dicts list it once per such layer)."""

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(float(k)), requires_grad=False)

    def expmap0(self, u: torch.Tensor) -> torch.Tensor:
        """Tangent vectors at the origin, space part u (..., n) (time part 0) -> points (..., n + 1)."""
        norm = leaky_clamp(u.pow(2).sum(dim=-1, keepdim=True), lo=1e-9).sqrt()  # (..., 1)
        space = torch.sinh(norm.clamp(max=EXP_MAX_NORM)) * (u / norm)
        return torch.cat([self.time(space), space], dim=-1)

    def time(self, space: torch.Tensor) -> torch.Tensor:
        """The time coordinate that puts `space` (..., n) on the hyperboloid -> (..., 1)."""
        return torch.sqrt(self.k + space.pow(2).sum(dim=-1, keepdim=True))

    @staticmethod
    def logmap0(x: torch.Tensor) -> torch.Tensor:
        """Points (..., n + 1) -> space part (..., n) of their tangent vectors at the origin (time part 0).

        Only x_0 sets the distance: for a concatenation of several heads' points (each with its own time axis,
        as the original passes them) the later heads' time coordinates are kept as features."""
        t = x[..., :1]  # (..., 1)
        return acosh(t) / torch.sqrt(t * t - 1) * x[..., 1:]

    @staticmethod
    def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Minkowski inner product <x, y>_L = -x_0 y_0 + x_s . y_s over the last axis (keeps it)."""
        xy = x * y
        return -xy[..., :1] + xy[..., 1:].sum(dim=-1, keepdim=True)

    @classmethod
    def midpoint(cls, points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted Lorentzian centroid: weights (..., Lq, Lk) over points (..., Lk, n + 1) -> (..., Lq, n + 1)."""
        avg = weights @ points
        return avg / cls.inner(avg, avg).abs().clamp_min(1e-8).sqrt()


# ------------------------------------------------------------------ the partial-order loss (space components only)
def exp_map0(x: torch.Tensor, curv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Tangent vectors at the origin (B, D) -> space components of their points on the hyperboloid of curvature
    -curv: sinh(sqrt(c)|x|) x / (sqrt(c)|x|)."""
    r = curv**0.5 * x.norm(dim=-1, keepdim=True)  # (B, 1)
    return torch.sinh(r.clamp(min=eps, max=math.asinh(2**15))) * x / r.clamp(min=eps)


def half_aperture(x: torch.Tensor, curv: torch.Tensor, min_radius: float = 0.1, eps: float = 1e-8) -> torch.Tensor:
    """Half-aperture of the entailment cone at each point x (B, D) -> (B,), in (0, pi/2]."""
    s = 2 * min_radius / (x.norm(dim=-1) * curv**0.5 + eps)
    return torch.asin(s.clamp(min=-1 + eps, max=1 - eps))


def oxy_angle(x: torch.Tensor, y: torch.Tensor, curv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Exterior angle at x of the hyperbolic triangle (origin, x, y), pairwise over rows: (B, D) x2 -> (B,)."""
    x_time = torch.sqrt(1 / curv + x.pow(2).sum(dim=-1))
    y_time = torch.sqrt(1 / curv + y.pow(2).sum(dim=-1))
    c_xyl = curv * ((x * y).sum(dim=-1) - x_time * y_time)  # curvature-scaled Lorentzian inner product
    numer = y_time + c_xyl * x_time
    denom = torch.sqrt((c_xyl**2 - 1).clamp(min=eps))
    return torch.acos((numer / (x.norm(dim=-1) * denom + eps)).clamp(min=-1 + eps, max=1 - eps))
