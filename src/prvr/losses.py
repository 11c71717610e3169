"""DreamPRVR losses: ranking (info-NCE, triplet with random/hard negatives), textual semantic structure
(query diversity, query similarity preservation), KL of the video sampler, diffusion noise MSE.

Every function is batched over queries and videos (no Python loop over items); video membership is
label equality, never contiguity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prvr.config import LossConfig

NEG_INF = float("-inf")


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


def _random_valid_index(valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform choice of one True column per row of valid (R, C) -> (R,) (rows without any give 0)."""
    r = torch.rand(valid.shape, device=valid.device, generator=generator)
    return r.masked_fill(~valid, -1.0).argmax(dim=1)


def triplet_ranking(scores: torch.Tensor, labels: torch.Tensor, margin: float, hard: bool, hard_pool_size: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Hinge ranking on normalised (N, B) scores, both directions.

    text->video: negative = a random other video, or (hard) a random one among the `hard_pool_size`
    highest-scoring other videos. video->text: positive = mean score of the video's queries, negative = a
    random query of another video, or (hard) the highest-scoring one.
    """
    N, B = scores.shape
    pos = positive_mask(labels, B)  # (N, B)
    if B < 2:
        return scores.sum() * 0.0
    # text -> video
    pos_score = scores.gather(1, labels[:, None]).squeeze(1)  # (N,)
    pool = min(1 + hard_pool_size, B) if hard else B
    order = scores.detach().masked_fill(pos, float("inf")).argsort(dim=1, descending=True)  # positive first
    k = torch.randint(1, pool, (N,), device=scores.device, generator=generator)
    neg_t2v = scores.gather(1, order.gather(1, k[:, None])).squeeze(1)
    loss_t2v = F.relu(margin + neg_t2v - pos_score).mean()
    # video -> text
    counts = pos.sum(dim=0)  # (B,)
    has_query = counts > 0
    mean_pos = (scores * pos).sum(dim=0) / counts.clamp_min(1)  # (B,)
    neg_valid = ~pos  # (N, B) queries of other videos
    if hard:
        neg_v2t = scores.masked_fill(pos, NEG_INF).max(dim=0).values
    else:
        idx = _random_valid_index(neg_valid.T, generator)  # (B,)
        neg_v2t = scores.gather(0, idx[None]).squeeze(0)
    usable = has_query & neg_valid.any(dim=0)
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


class DreamPRVRLoss:
    """Weighted sum of all terms; returns (total, {term: unweighted value})."""

    def __init__(self, cfg: LossConfig):
        if cfg.textual_structure not in ("both", "qdl", "qsp", "none"):
            raise ValueError(f"loss.textual_structure must be both|qdl|qsp|none, got {cfg.textual_structure!r}")
        self.cfg = cfg

    def __call__(self, out, labels: torch.Tensor, hard_negative: bool = False,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from prvr.models.dreamprvr.model import max_similarity

        c = self.cfg
        lf = c.loss_factor
        q, vids = out.query, out.videos
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        for scale, tokens, w in (("clip", vids.clip, lf[0]), ("frame", vids.frame, lf[1])):
            raw = max_similarity(q, tokens, normalize=False)  # (N, B)
            cos = max_similarity(q, tokens, normalize=True)
            terms[f"{scale}_nce"] = (w, info_nce(raw, labels))
            terms[f"{scale}_triplet"] = (1.0, triplet_ranking(cos, labels, c.margin, hard_negative, c.hard_pool_size,
                                                              generator))
        if c.textual_structure in ("both", "qdl"):
            m, a, lam = c.neg_factor
            terms["query_diversity"] = (lf[2], query_diversity(out.query_first, labels, m, a, lam))
        if c.textual_structure in ("both", "qsp"):
            terms["query_similarity_preservation"] = (lf[3], query_similarity_preservation(
                out.query_first, labels, c.deterministic_tau))
        if out.mu is not None:
            terms["kl"] = (lf[4], kl_divergence(out.mu, out.logvar))
        if out.eps_pred is not None:
            terms["diffusion"] = (lf[5], diffusion_noise_mse(out.eps_pred, out.eps_true))
        total = sum(w * v for w, v in terms.values())
        return total, {k: v.detach() for k, (_, v) in terms.items()}
