"""Holmes' loss: clip- and frame-scale info-NCE and triplet ranking, query diversity, the inter-video evidential
terms (frame view, clip view, their Dempster-Shafer combination) and, after warm-up (`loss.refine_start_epoch`),
calibrated labels for ambiguous queries and the intra-video evidential term against a partial-OT plan."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prvr.models.base import ModelLoss, TrainStep
from prvr.models.holmes.config import HolmesLossConfig
from prvr.models.holmes.evidential import (
    dirichlet_alpha,
    ds_combine,
    edl_mse,
    refined_labels,
    view_consistency,
)
from prvr.models.holmes.model import TrainOutputs
from prvr.models.holmes.transport import intra_video_edl, pot_inputs, transport_plan
from prvr.models.losses import info_nce, positive_mask, query_diversity

NEG_INF = float("-inf")


def triplet_ranking(scores: torch.Tensor, labels: torch.Tensor, margin: float, hard: bool, hard_pool_size: int,
                    t2v_pick: torch.Tensor | None = None, v2t_pick: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Hinge ranking on normalised (N, B) scores, both directions, negatives drawn as the original draws them.

    text->video: each query's row sorted descending with its positive first; the negative sits at position
    k ~ U{1, ..., P-1}, P = B (random) or min(1 + hard_pool_size, B) (hard: still random, among the top ones).
    video->text: positive = mean score of the video's queries; the other videos' queries sorted descending, the
    negative at k ~ U{0, ..., n_neg-1} (random) or 0 (hard). The t2v hinges are averaged over queries, the v2t
    hinges summed over videos and divided by B. `t2v_pick` (N,), `v2t_pick` (B,) give the positions instead of
    drawing them (a test feeding the original's recorded draws); hard v2t draws nothing.
    """
    N, B = scores.shape
    if B < 2:
        return scores.sum() * 0.0
    pos = positive_mask(labels, B)  # (N, B)
    pos_score = scores.gather(1, labels[:, None]).squeeze(1)  # (N,)
    pool = min(1 + hard_pool_size, B) if hard else B
    order = scores.detach().masked_fill(pos, float("inf")).argsort(dim=1, descending=True)  # (N, B) positive first
    k = torch.randint(1, pool, (N,), device=scores.device, generator=generator) if t2v_pick is None else t2v_pick
    neg_t2v = scores.gather(1, order.gather(1, k[:, None])).squeeze(1)
    loss_t2v = F.relu(margin + neg_t2v - pos_score).sum() / N
    counts, n_neg = pos.sum(dim=0), (~pos).sum(dim=0)  # (B,) each
    mean_pos = (scores * pos).sum(dim=0) / counts.clamp_min(1)  # (B,)
    if hard:
        neg_v2t = scores.masked_fill(pos, NEG_INF).max(dim=0).values
    else:
        if v2t_pick is None:
            u = torch.rand(B, device=scores.device, generator=generator)
            v2t_pick = (u * n_neg).long().clamp(max=(n_neg - 1).clamp_min(0))
        v_order = scores.detach().T.masked_fill(pos.T, NEG_INF).argsort(dim=1, descending=True)  # (B, N) negatives first
        neg_v2t = scores.T.gather(1, v_order.gather(1, v2t_pick[:, None])).squeeze(1)  # (B,)
    usable = (counts > 0) & (n_neg > 0)
    loss_v2t = F.relu(margin + neg_v2t - mean_pos).masked_fill(~usable, 0.0).sum() / B
    return loss_t2v + loss_v2t


class HolmesLoss(ModelLoss):
    """`step.extras["draws"]` (optional): recorded triplet negatives `{frame,clip}_t2v` (N,), `{frame,clip}_v2t` (B,)
    used instead of drawing (tests feeding the original's draws)."""

    config_class = HolmesLossConfig
    cfg: HolmesLossConfig

    def __call__(self, out: TrainOutputs, labels: torch.Tensor, step: TrainStep
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        refine = step.epoch >= c.refine_start_epoch
        draws = step.extras.get("draws") or {}
        s = out.scores()  # (N, B) each
        terms: dict[str, tuple[float, torch.Tensor]] = {
            "clip_nce": (c.clip_nce_weight, info_nce(s.clip_raw, labels)),
            "frame_nce": (c.frame_nce_weight, info_nce(s.frame_raw, labels)),
        }
        for view, scores in (("frame", s.frame), ("clip", s.clip)):  # the original's draw order
            terms[f"{view}_triplet"] = (1.0, triplet_ranking(scores, labels, c.margin, step.hard_negative,
                                                             c.hard_pool_size, draws.get(f"{view}_t2v"),
                                                             draws.get(f"{view}_v2t"), step.generator))
        terms["query_diversity"] = (c.query_diversity_weight, query_diversity(
            out.query_second, labels, c.diversity_margin, c.diversity_alpha, c.diversity_lambda))
        frame_alpha, clip_alpha = dirichlet_alpha(s.frame, c.edl_tau), dirichlet_alpha(s.clip, c.edl_tau)
        if c.inter_video_edl:
            if refine and c.query_identification:
                y = refined_labels(s.frame, s.clip, labels, frame_alpha, clip_alpha,
                                   c.division_beta, c.smooth_beta)
            else:
                y = F.one_hot(labels, s.frame.shape[1]).to(s.frame.dtype)
            terms["frame_edl"] = (c.edl_weight, edl_mse(y, frame_alpha).mean())
            terms["clip_edl"] = (c.edl_weight, edl_mse(y, clip_alpha).mean())
            if c.combine_views:
                _, combined = ds_combine(frame_alpha, clip_alpha)
                terms["combine_edl"] = (c.edl_weight, edl_mse(y, combined).mean())
        if refine and c.intra_video_edl:
            sim, mask = pot_inputs(out.clip, out.query_second, labels)  # (B, Q, C), (B, Q)
            plan = transport_plan(sim, mask, c.pot_scale, c.pot_prompt_ratio, c.sinkhorn_iterations, c.pot_dustbin)
            terms["intra_video_edl"] = (c.intra_video_edl_weight, intra_video_edl(sim, plan, mask, c.intra_video_edl_tau))
        if c.consistency_weight > 0:
            terms["consistency"] = (c.consistency_weight, view_consistency(frame_alpha, clip_alpha))
        total = sum(w * v for w, v in terms.values())
        return total, {k: v.detach() for k, (_, v) in terms.items()}
