"""Diffusion register estimator: a small denoiser eps_theta(x_t, t, C) and the cosine schedule.

Training (text-supervised): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for every t, with eps = the
video-centric mu and x0 the perturbed text targets; MSE between predicted and true eps.
Generation (truncated): start at mu, T denoising steps, the posterior noise term reuses mu.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prvr.models.dreamprvr.samplers import sinusoidal_table


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> np.ndarray:
    x = np.linspace(0, timesteps, timesteps + 1, dtype=np.float64)
    abar = np.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    abar = abar / abar[0]
    return np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)


def schedule_coefficients(timesteps: int) -> dict[str, np.ndarray]:
    """The DDPM quantities of the cosine schedule, float64, each (T,)."""
    betas = cosine_beta_schedule(timesteps)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    }


class DiffusionSchedule(nn.Module):
    """Cosine-schedule coefficients as float32 buffers (not part of the state dict)."""

    def __init__(self, timesteps: int):
        super().__init__()
        self.timesteps = timesteps
        for name, value in schedule_coefficients(timesteps).items():
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x0, noise (B, K, D) -> x_t for every t, (T, B, K, D)."""
        a = self.sqrt_alphas_cumprod[:, None, None, None]
        b = self.sqrt_one_minus_alphas_cumprod[:, None, None, None]
        return a * x0[None] + b * noise[None]

    def step(self, x: torch.Tensor, eps: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """One reverse step x_t -> x_{t-1}, with x0 clamped to [-1, 1]."""
        x0 = (self.sqrt_recip_alphas_cumprod[t] * x - self.sqrt_recipm1_alphas_cumprod[t] * eps).clamp(-1.0, 1.0)
        mean = self.posterior_mean_coef1[t] * x0 + self.posterior_mean_coef2[t] * x
        if t == 0:
            return mean
        return mean + torch.exp(0.5 * self.posterior_log_variance_clipped[t]) * noise


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class TimeEmbedding(nn.Module):
    """Frozen (T, D) table -> Linear -> Swish -> Linear. The original's global init overwrites the sinusoidal
    table with N(0, 0.02) values that are never trained (DreamPRVR.reset_parameters restores it on request)."""

    def __init__(self, timesteps: int, dim: int):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(sinusoidal_table(timesteps, dim), freeze=True)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(swish(self.fc1(self.table(t))))


class DenoiserBlock(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.in_norm = nn.LayerNorm(dim)
        self.in_linear = nn.Linear(dim, dim)
        self.time_proj = nn.Linear(dim, dim)
        self.cond_proj = nn.Linear(dim, dim)
        self.out_norm = nn.LayerNorm(dim)
        self.out_linear = nn.Linear(dim, dim)
        self.shortcut = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (M, K, D), temb (M, D), cond (M, K, D)."""
        h = self.in_linear(swish(self.in_norm(x)))
        h = h + self.time_proj(swish(temb))[:, None] + self.cond_proj(swish(cond))
        h = self.out_linear(self.drop(swish(self.out_norm(h))))
        return h + self.shortcut(x)


class Denoiser(nn.Module):
    """eps_theta(x_t, t, C) on register tensors (M, K, D)."""

    def __init__(self, dim: int, timesteps: int, num_layers: int = 2):
        super().__init__()
        self.time_embed = TimeEmbedding(timesteps, dim)
        self.cond_norm = nn.LayerNorm(dim)
        self.cond_linear = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(DenoiserBlock(dim) for _ in range(num_layers))
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        temb = self.time_embed(t)  # (M, D)
        c = self.cond_linear(F.relu(self.cond_norm(cond)))  # (M, K, D)
        h = x
        for block in self.blocks:
            h = block(h, temb, c)
        return self.out(h + x)
