"""Intra-video evidence: each video's captions are softly aligned to its clips by partial optimal transport with an
adaptive dustbin (a row that absorbs the mass of clips no caption describes); the plan is the pseudo label of an
evidential loss on the query-clip similarities. Batched over videos, captions padded per video."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prvr.models.holmes.evidential import edl_mse
from prvr.models.losses import positive_mask


def group_queries(query: torch.Tensor, labels: torch.Tensor, num_videos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) queries -> (B, Q, D) per video in query order, zero-padded to the most captions Q, and mask (B, Q)."""
    member = positive_mask(labels, num_videos)  # (N, B)
    slot = (member.cumsum(dim=0) * member).sum(dim=1) - 1  # (N,) rank of each query among its video's
    Q = int(member.sum(dim=0).max())
    grouped = query.new_zeros(num_videos, Q, query.shape[1]).index_put((labels, slot), query)
    mask = query.new_zeros(num_videos, Q).index_put((labels, slot), query.new_ones(len(labels)))
    return grouped, mask


def intra_video_similarity(clips: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """clips (B, C, D), grouped queries (B, Q, D) -> cosine min-max normalised per video over its C x Q block
    (padded caption columns, cosine 0, included), (B, Q, C)."""
    cos = torch.bmm(F.normalize(clips, dim=-1), F.normalize(queries, dim=-1).transpose(1, 2))  # (B, C, Q)
    flat = cos.flatten(1)
    lo, hi = flat.min(dim=1).values[:, None, None], flat.max(dim=1).values[:, None, None]
    return ((cos - lo) / (hi - lo + 1e-8)).transpose(1, 2)


def dustbin_value(sim: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per video, the k-th smallest similarity of its real captions, k = max(1, floor(ratio * count)) -> (B,)
    (0 for a video without captions)."""
    B, Q, C = sim.shape
    count = mask.sum(dim=1).to(torch.float64) * C  # (B,)
    k = torch.floor(ratio * count).clamp(min=1).minimum(count.clamp(min=1)).long()  # (B,)
    ordered = sim.masked_fill(mask[..., None] == 0, float("inf")).flatten(1).sort(dim=1).values  # (B, Q*C)
    value = ordered.gather(1, (k - 1)[:, None]).squeeze(1)
    return torch.where(count > 0, value, torch.zeros_like(value))


@torch.no_grad()
def transport_plan(sim: torch.Tensor, mask: torch.Tensor, scale: float, prompt_ratio: float, iterations: int,
                   dustbin: bool = True) -> torch.Tensor:
    """Partial optimal transport of captions onto clips, log-domain Sinkhorn from zero potentials.

    sim (B, Q, C), mask (B, Q). With the dustbin, rows are the Q captions plus a dustbin row of value the
    `prompt_ratio` quantile; row masses 1/(C + M) per caption (M = real captions) and C/(C + M) for the dustbin,
    column masses 1/C. Returns the plan without the dustbin, each caption row normalised to sum 1 (B, Q, C).
    """
    B, Q, C = sim.shape
    n = sim.new_full((B,), float(C))
    m = mask.sum(dim=1)  # (B,)
    log_nu = (-n.log())[:, None].expand(B, C)  # (B, C)
    couplings = sim / scale
    if dustbin:
        prompt = dustbin_value(sim, mask, prompt_ratio) / scale  # (B,)
        couplings = torch.cat([couplings, prompt[:, None, None].expand(B, 1, C)], dim=1)  # (B, Q+1, C)
        row = -(n + m).log()  # (B,)
        log_mu = torch.cat([row[:, None].expand(B, Q).masked_fill(mask == 0, -1e9), (n.log() + row)[:, None]], dim=1)
    else:
        log_mu = (-m.clamp(min=1).log())[:, None].expand(B, Q).masked_fill(mask == 0, -1e9)  # (B, Q)
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iterations):  # Sinkhorn iterations (sequential by nature), each batched over videos
        u = log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1)
    log_plan = (couplings + u[:, :, None] + v[:, None, :] + n.log()[:, None, None])[:, :Q]  # x C: masses to counts
    plan = log_plan.exp() * mask[..., None]
    return plan / (plan.sum(dim=2, keepdim=True) + 1e-8)


def intra_video_edl(sim: torch.Tensor, plan: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Evidential MSE of each caption's clip evidence exp(tanh(sim)/tau) against its plan row; mean over a video's
    real captions, then over the videos that have captions."""
    B, Q, C = sim.shape
    alpha = torch.exp(torch.tanh(sim) / tau) + 1
    per_query = edl_mse(plan.reshape(-1, C), alpha.reshape(-1, C)).view(B, Q)
    per_video = (per_query * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-8)
    has = mask.sum(dim=1) > 0
    return per_video[has].mean() if bool(has.any()) else sim.sum() * 0.0


def pot_inputs(clips: torch.Tensor, query: torch.Tensor, labels: torch.Tensor):
    """The grouped captions and the normalised query-clip similarities -> (sim (B, Q, C), mask (B, Q))."""
    grouped, mask = group_queries(query, labels, clips.shape[0])
    return intra_video_similarity(clips, grouped), mask

