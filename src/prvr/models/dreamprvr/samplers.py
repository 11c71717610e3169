"""The two samplers of DreamPRVR: the video probabilistic variational sampler (video-centric initialisation)
and the textual perturbation sampler (training-only diffusion targets)."""

from __future__ import annotations

import math

import torch
from torch import nn

from prvr.models.base import per_item_normal


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sin/cos position codes: pe[p, 2k] = sin(p / 10000^(2k/dim)), pe[p, 2k+1] = cos(...)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


class GPO(nn.Module):
    """Generalised pooling operator: rank-position weights from a BiGRU over position codes; each feature
    dimension sorted descending over tokens and weighted-summed."""

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1):
        super().__init__()
        self.d_pe = d_pe
        self.gru = nn.GRU(d_pe, d_hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.score = nn.Linear(d_hidden, 1, bias=False)
        self.temperature = temperature

    def weights(self, length: int, device: torch.device) -> torch.Tensor:
        pe = sinusoidal_table(length, self.d_pe).to(device)[None]  # (1, L, d_pe)
        out, _ = self.gru(pe)  # (1, L, 2*d_hidden)
        half = out.shape[-1] // 2
        out = (out[..., :half] + out[..., half:]) / 2  # (1, L, d_hidden)
        return (self.score(out) / self.temperature).softmax(dim=1)  # (1, L, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> (B, D)."""
        w = self.weights(x.shape[1], x.device)
        return (x.sort(dim=1, descending=True).values * w).sum(dim=1)


class AttentivePooling(nn.Module):
    """Single-head self-attentive pooling: softmax_l(w2 tanh(W1 x_l)) over tokens, weighted sum."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim // 2, bias=False)
        self.score = nn.Linear(dim // 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.score(torch.tanh(self.proj(x))).softmax(dim=1)  # (B, L, 1)
        return (attn * x).sum(dim=1)  # (B, D)


class MeanHead(nn.Module):
    """mu = normalise(LN(g + sigmoid(fc(attentive pool))))."""

    def __init__(self, dim: int):
        super().__init__()
        self.pool = AttentivePooling(dim)
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        mu = self.norm(pooled + torch.sigmoid(self.fc(self.pool(x))))  # (B, D)
        return mu / mu.norm(dim=-1, keepdim=True)


class LogVarHead(nn.Module):
    """log sigma^2 = fc(attentive pool) + fc_pooled(g)."""

    def __init__(self, dim: int):
        super().__init__()
        self.pool = AttentivePooling(dim)
        self.fc = nn.Linear(dim, dim)
        self.fc_pooled = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x)) + self.fc_pooled(pooled)  # (B, D)


class VideoSampler(nn.Module):
    """Video probabilistic variational sampler: a video-centric Gaussian (mu, log sigma^2) from E (B, Kc, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gpo = GPO()
        self.mean_head = MeanHead(dim)
        self.logvar_head = LogVarHead(dim)

    def forward(self, encoded_clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.gpo(encoded_clips)  # (B, D)
        return self.mean_head(encoded_clips, pooled), self.logvar_head(encoded_clips, pooled)


class TextPerturbationSampler(nn.Module):
    """K perturbed text targets per video: alpha * standardise(t) + beta, alpha ~ N(1, (s*std)^2), beta ~ N(mean, (s*std)^2).

    Training only; stateless. With K = 1 it makes a single draw (the original crashes there).
    """

    def __init__(self, num_samples: int, scale: float = 0.1):
        super().__init__()
        self.num_samples = num_samples
        self.scale = scale

    def forward(self, text_mean: torch.Tensor, generator: torch.Generator | None = None,
                draws: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """text_mean (B, D) -> x0 (B, K, D). `draws`: (alpha, beta), each (B, K, D), used instead of drawing (a
        test feeding another implementation's recorded draws)."""
        B, D = text_mean.shape
        standardised = (text_mean - text_mean.mean(-1, keepdim=True)) / torch.sqrt(
            text_mean.var(-1, unbiased=False, keepdim=True) + 1e-5)  # (B, D)
        if draws is not None:
            alpha, beta = draws
        else:
            with torch.no_grad():
                spread = (self.scale * text_mean.std(-1, keepdim=True)).clamp_min(1e-6)[:, None]  # (B, 1, 1)
                centre = text_mean.mean(-1, keepdim=True)[:, None]  # (B, 1, 1)
                shape = (B, self.num_samples, D)
                if generator is not None:
                    alpha = 1.0 + spread * torch.randn(shape, device=text_mean.device, generator=generator)
                    beta = centre + spread * torch.randn(shape, device=text_mean.device, generator=generator)
                else:  # per video: distributed training draws what one process draws
                    alpha = 1.0 + spread * per_item_normal("videos", *shape, device=text_mean.device)
                    beta = centre + spread * per_item_normal("videos", *shape, device=text_mean.device)
        return alpha * standardised[:, None] + beta
