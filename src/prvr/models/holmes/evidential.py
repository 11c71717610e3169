"""Holmes' evidential learning: similarity scores read as Dirichlet evidence, the two views (frame, clip) combined by
Dempster-Shafer, queries identified by the three-fold principle (certain and consistent / inconsistent /
uncertain) and the ambiguous ones given calibrated (smoothed) labels.

Everything is batched over queries (N) and the K videos of the batch; no Python loop over items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dirichlet_alpha(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """alpha = exp(tanh(s) / tau) + 1: evidence from (N, K) similarity scores (at most e^(1/tau))."""
    return torch.exp(torch.tanh(scores) / tau) + 1


def edl_mse(labels: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per row of (R, K): sum_k (y_k - alpha_k/S)^2 + sum_k alpha_k (S - alpha_k) / (S^2 (S + 1)) -> (R,)."""
    S = alpha.sum(dim=-1, keepdim=True)  # (R, 1)
    err = (labels - alpha / S).pow(2).sum(dim=-1)
    var = (alpha * (S - alpha) / (S * S * (S + 1))).sum(dim=-1)
    return err + var


def ds_combine(alpha1: torch.Tensor, alpha2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dempster-Shafer combination of two Dirichlet opinions over K classes, (N, K) each -> (evidence, alpha)."""
    K = alpha1.shape[1]
    S1, S2 = alpha1.sum(dim=1, keepdim=True), alpha2.sum(dim=1, keepdim=True)  # (N, 1)
    b1, b2 = (alpha1 - 1) / S1, (alpha2 - 1) / S2  # beliefs (N, K)
    u1, u2 = K / S1, K / S2  # uncertainties (N, 1)
    conflict = b1.sum(dim=1) * b2.sum(dim=1) - (b1 * b2).sum(dim=1)  # sum_{i != j} b1_i b2_j, (N,)
    scale = (1 - conflict)[:, None]
    belief = (b1 * b2 + b1 * u2 + b2 * u1) / scale
    uncertainty = u1 * u2 / scale
    evidence = belief * (K / uncertainty)
    return evidence, evidence + 1


def identify_queries(scores: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor, beta: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The three-fold principle on one view -> (certain-and-consistent, inconsistent) masks (N,) each.

    Thresholds from the correctly ranked queries: uncertainty K/S above min(max over them, 1 - beta) is uncertain;
    a certain query whose score at its label reaches max(min over them, beta) is consistent, else inconsistent
    (defaults 1 - beta and beta when none is correct). Consistent queries with an expected entropy above the
    (lower) median of the batch move to the inconsistent set.
    """
    K = scores.shape[1]
    consensus = scores.gather(1, labels[:, None]).squeeze(1)  # (N,) score at the label
    S = alpha.sum(dim=1)  # (N,)
    uncertainty = K / S
    correct = scores.argmax(dim=1) == labels
    beta_t = scores.new_tensor(beta)
    if correct.any():
        max_uncertainty = torch.minimum(uncertainty[correct].max(), 1 - beta_t)
        min_consensus = torch.maximum(consensus[correct].min(), beta_t)
    else:
        max_uncertainty, min_consensus = scores.new_tensor(1 - beta), beta_t
    certain = uncertainty <= max_uncertainty
    consistent = certain & (consensus >= min_consensus)
    inconsistent = certain & (consensus < min_consensus)
    p = alpha / S[:, None]
    entropy = (p * (torch.digamma(S + 1)[:, None] - torch.digamma(alpha + 1))).sum(dim=1)  # expected entropy (N,)
    moved = consistent & (entropy > entropy.median())
    return consistent & ~moved, inconsistent | moved


def refined_labels(frame_scores: torch.Tensor, clip_scores: torch.Tensor, labels: torch.Tensor,
                   frame_alpha: torch.Tensor, clip_alpha: torch.Tensor, division_beta: float, smooth_beta: float
                   ) -> torch.Tensor:
    """One-hot labels (N, K), smoothed for the ambiguous queries (consistent in one view and inconsistent in the
    other, or inconsistent in both): y = mean over views of (1 - b) y + b softmax(view scores), detached."""
    y = F.one_hot(labels, frame_scores.shape[1]).to(frame_scores.dtype)
    f_c, f_n = identify_queries(frame_scores, labels, frame_alpha, division_beta)
    c_c, c_n = identify_queries(clip_scores, labels, clip_alpha, division_beta)
    ambiguous = (f_c & c_n) | (f_n & c_c) | (f_n & c_n)  # (N,)
    b = smooth_beta
    p_frame, p_clip = frame_scores.detach().softmax(dim=1), clip_scores.detach().softmax(dim=1)
    smoothed = 0.5 * (((1 - b) * y + b * p_frame) + ((1 - b) * y + b * p_clip))
    return torch.where(ambiguous[:, None], smoothed, y)


def view_consistency(alpha1: torch.Tensor, alpha2: torch.Tensor) -> torch.Tensor:
    """Degree of conflict between two views (multisrc's dc loss): mean over queries of
    2 * (sum_k |p1 - p2| / 2) * (1 - u1)(1 - u2), p = alpha / S, u = K / S."""
    K = alpha1.shape[1]
    S1, S2 = alpha1.sum(dim=1, keepdim=True), alpha2.sum(dim=1, keepdim=True)
    distance = (alpha1 / S1 - alpha2 / S2).abs().sum(dim=1) / 2  # (N,)
    certainty = ((1 - K / S1) * (1 - K / S2)).squeeze(1)
    return (2 * distance * certainty).mean()
