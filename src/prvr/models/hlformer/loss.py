"""HLFormer's loss: clip- and frame-scale info-NCE and triplet ranking, query diversity (L_div) and the partial
order preservation loss (L_pop: each query inside the entailment cone of its video, in hyperbolic space).

Negatives of the triplet terms are drawn by the shared `triplet_ranking`; a caller may fix them instead through
`TrainStep.extras["triplet_negatives"] = {"clip": (neg_video, neg_query), "frame": ...}` (the parity tests feed
the original's recorded draws that way): neg_video (N,) one other video per query, neg_query (B,) one query of
another video per video.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prvr.models.base import ModelLoss, TrainStep
from prvr.models.hlformer.config import HLFormerLossConfig
from prvr.models.hlformer.lorentz import half_aperture, oxy_angle
from prvr.models.hlformer.model import TrainOutputs
from prvr.models.losses import info_nce, max_similarity, positive_mask, query_diversity, triplet_ranking


def triplet_with_negatives(scores: torch.Tensor, labels: torch.Tensor, margin: float, neg_video: torch.Tensor,
                           neg_query: torch.Tensor) -> torch.Tensor:
    """The triplet ranking loss of `triplet_ranking` with the negatives given: mean over queries of
    [m + s(q, v^-_q) - s(q, v_q)]_+ plus mean over videos of [m + s(q^-_v, v) - mean_{q in v} s(q, v)]_+."""
    pos = positive_mask(labels, scores.shape[1])  # (N, B)
    pos_score = scores.gather(1, labels[:, None]).squeeze(1)  # (N,)
    t2v = F.relu(margin + scores.gather(1, neg_video[:, None]).squeeze(1) - pos_score).mean()
    mean_pos = (scores * pos).sum(dim=0) / pos.sum(dim=0).clamp_min(1)  # (B,)
    v2t = F.relu(margin + scores.gather(0, neg_query[None]).squeeze(0) - mean_pos).mean()
    return t2v + v2t


def partial_order(hyp_video: torch.Tensor, hyp_query: torch.Tensor, labels: torch.Tensor, curv: torch.Tensor,
                  min_radius: float) -> torch.Tensor:
    """mean over queries of [angle(video, query) - half aperture of the video's cone]_+ (0 inside the cone)."""
    video = hyp_video[labels]  # (N, D)
    return (oxy_angle(video, hyp_query, curv) - half_aperture(video, curv, min_radius)).clamp(min=0).mean()


class HLFormerLoss(ModelLoss):
    config_class = HLFormerLossConfig
    cfg: HLFormerLossConfig

    def __call__(self, out: TrainOutputs, labels: torch.Tensor, step: TrainStep
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        given = step.extras.get("triplet_negatives", {})
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        for scale, tokens, w in (("clip", out.clip, c.clip_nce_weight), ("frame", out.frame, c.frame_nce_weight)):
            raw = max_similarity(out.query, tokens, normalize=False)  # (N, B)
            cos = max_similarity(out.query, tokens, normalize=True)
            terms[f"{scale}_nce"] = (w, info_nce(raw, labels))
            if scale in given:
                triplet = triplet_with_negatives(cos, labels, c.margin, *given[scale])
            else:
                triplet = triplet_ranking(cos, labels, c.margin, step.hard_negative, c.hard_pool_size, step.generator)
            terms[f"{scale}_triplet"] = (1.0, triplet)
        if c.use_query_diversity:
            terms["query_diversity"] = (c.query_diversity_weight, query_diversity(
                out.query_second, labels, c.diversity_margin, c.diversity_alpha, c.diversity_lambda))
        if c.use_partial_order:
            terms["partial_order"] = (c.partial_order_weight, partial_order(out.hyp_video, out.hyp_query, labels,
                                                                            out.curv, c.min_radius))
        total = sum(w * v for w, v in terms.values())
        return total, {k: v.detach() for k, (_, v) in terms.items()}
