"""Loss terms shared by the MS-SL / GMMFormer / HLFormer / DreamPRVR family: ranking (info-NCE, triplet with
random or hard negatives), textual semantic structure (query diversity, query similarity preservation), KL of a
Gaussian, noise MSE. A model's own loss (`models/<name>/loss.py`) weights and combines them.

Every function is batched over queries and videos (no Python loop over items); video membership is
label equality, never contiguity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def max_similarity(query: torch.Tensor, tokens: torch.Tensor, normalize: bool) -> torch.Tensor:
    """query (N, D), tokens (B, L, D) -> max over L of cos (or of the dot product) -> (N, B)."""
    if normalize:
        query, tokens = F.normalize(query, dim=-1), F.normalize(tokens, dim=-1)
    return torch.einsum("nd,bld->nbl", query, tokens).max(dim=-1).values  # max, not amax: one argmax gets the grad


def segment_mean(x: torch.Tensor, labels: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of rows of x (N, D) grouped by labels (N,) -> (num_segments, D)."""
    sums = x.new_zeros(num_segments, x.shape[1]).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_segments).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def positive_mask(labels: torch.Tensor, num_videos: int) -> torch.Tensor:
    """(N,) labels -> (N, B) bool, True where query j belongs to video b."""
    return labels[:, None] == torch.arange(num_videos, device=labels.device)[None]


def info_nce(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Both directions on (N, B) scores, no temperature: text->video over videos, video->text with all of a
    video's queries as positives. Videos without queries in the batch are left out of the second term."""
    pos = positive_mask(labels, scores.shape[1])
    t2v = scores.logsumexp(dim=1) - scores.gather(1, labels[:, None]).squeeze(1)  # (N,)
    has_query = pos.any(dim=0)  # (B,)
    v2t = scores.logsumexp(dim=0) - scores.masked_fill(~pos, NEG_INF).logsumexp(dim=0)  # (B,)
    return t2v.mean() + v2t[has_query].mean()


def triplet_ranking(scores: torch.Tensor, labels: torch.Tensor, margin: float, hard: bool, hard_pool_size: int,
                    generator: torch.Generator | None = None, t2v_pick: torch.Tensor | None = None,
                    v2t_pick: torch.Tensor | None = None) -> torch.Tensor:
    """Hinge ranking on normalised (N, B) scores, both directions, negatives drawn as the originals draw them.

    text->video: each query's row is sorted descending with its positive forced first; the negative is column
    k ~ U{1, ..., P-1}, P = B (random) or min(1 + hard_pool_size, B) (hard: among the `hard_pool_size`
    highest-scoring other videos). video->text: positive = mean score of the video's queries; the other videos'
    queries are sorted descending and the negative is position k ~ U{0, ..., n_neg-1} (random) or 0 (hard).
    `t2v_pick` (N,) and `v2t_pick` (B,) give those positions instead of drawing them (a test feeding another
    implementation's recorded draws); `v2t_pick` is ignored in hard mode, which draws nothing there.
    """
    N, B = scores.shape
    pos = positive_mask(labels, B)  # (N, B)
    if B < 2:
        return scores.sum() * 0.0
    # text -> video
    pos_score = scores.gather(1, labels[:, None]).squeeze(1)  # (N,)
    pool = min(1 + hard_pool_size, B) if hard else B
    order = scores.detach().masked_fill(pos, float("inf")).argsort(dim=1, descending=True)  # (N, B) positive first
    k = torch.randint(1, pool, (N,), device=scores.device, generator=generator) if t2v_pick is None else t2v_pick
    neg_t2v = scores.gather(1, order.gather(1, k[:, None])).squeeze(1)
    loss_t2v = F.relu(margin + neg_t2v - pos_score).mean()
    # video -> text
    counts = pos.sum(dim=0)  # (B,)
    mean_pos = (scores * pos).sum(dim=0) / counts.clamp_min(1)  # (B,)
    n_neg = (~pos).sum(dim=0)  # (B,) queries of other videos
    if hard:
        neg_v2t = scores.masked_fill(pos, NEG_INF).max(dim=0).values
    else:
        v_order = scores.detach().T.masked_fill(pos.T, NEG_INF).argsort(dim=1, descending=True)  # (B, N) negatives first
        if v2t_pick is None:
            u = torch.rand(B, device=scores.device, generator=generator)
            v2t_pick = (u * n_neg).long().clamp(max=(n_neg - 1).clamp_min(0))
        neg_v2t = scores.gather(0, v_order.gather(1, v2t_pick[:, None]).T).squeeze(0)  # (B,)
    usable = (counts > 0) & (n_neg > 0)
    loss_v2t = F.relu(margin + neg_v2t - mean_pos)[usable].mean() if usable.any() else scores.sum() * 0.0
    return loss_t2v + loss_v2t


def _same_video_pairs(labels: torch.Tensor) -> torch.Tensor:
    same = labels[:, None] == labels[None]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def query_diversity(query: torch.Tensor, labels: torch.Tensor, margin: float, alpha: float, lam: float) -> torch.Tensor:
    """Sum over same-video pairs i != j of (1 + cos)^lam * log(1 + exp(alpha (cos + margin))), / N."""
    x = F.normalize(query, dim=-1)
    cos = x @ x.T  # (N, N)
    pairs = _same_video_pairs(labels)
    terms = (1 + cos).pow(lam) * F.softplus(alpha * (cos + margin), threshold=1e4)
    return (terms * pairs).sum() / query.shape[0]


def query_similarity_preservation(query: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised-contrastive loss: positives = other queries of the same video, denominator = all others;
    rows without a positive are skipped (0 if none has one)."""
    x = F.normalize(query, dim=-1)
    logits = x @ x.T / tau  # (N, N)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    others = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    log_prob = logits - logits.masked_fill(~others, NEG_INF).logsumexp(dim=1, keepdim=True)
    pos = _same_video_pairs(labels)
    n_pos = pos.sum(dim=1)
    rows = n_pos > 0
    if not rows.any():
        return query.sum() * 0.0
    mean_log_prob = (log_prob * pos).sum(dim=1)[rows] / n_pos[rows]
    return -mean_log_prob.mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over dims, averaged over videos."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / mu.shape[0]


def diffusion_noise_mse(eps_pred: torch.Tensor, eps_true: torch.Tensor) -> torch.Tensor:
    """eps_pred (T, B, K, D) against eps_true (B, K, D), mean over everything."""
    return (eps_pred - eps_true[None]).pow(2).mean()
