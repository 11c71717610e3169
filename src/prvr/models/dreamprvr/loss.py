"""DreamPRVR's loss: clip- and frame-scale info-NCE and triplet ranking, the textual structure losses, the KL of
the video sampler and the diffusion noise error, weighted as in the authors' configs."""

from __future__ import annotations

import torch

from prvr.models.base import ModelLoss, TrainStep
from prvr.models.dreamprvr.config import DreamPRVRLossConfig
from prvr.models.dreamprvr.model import TrainOutputs
from prvr.models.losses import (
    diffusion_noise_mse,
    info_nce,
    kl_divergence,
    max_similarity,
    query_diversity,
    query_similarity_preservation,
    triplet_ranking,
)


class DreamPRVRLoss(ModelLoss):
    config_class = DreamPRVRLossConfig
    cfg: DreamPRVRLossConfig

    def __call__(self, out: TrainOutputs, labels: torch.Tensor, step: TrainStep
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        for scale, tokens, w in (("clip", out.clip, c.clip_nce_weight), ("frame", out.frame, c.frame_nce_weight)):
            raw = max_similarity(out.query, tokens, normalize=False)  # (N, B)
            cos = max_similarity(out.query, tokens, normalize=True)
            terms[f"{scale}_nce"] = (w, info_nce(raw, labels))
            draws = step.draws or {}
            terms[f"{scale}_triplet"] = (1.0, triplet_ranking(cos, labels, c.margin, step.hard_negative,
                                                              c.hard_pool_size, step.generator,
                                                              draws.get(f"{scale}_t2v"), draws.get(f"{scale}_v2t")))
        if c.textual_structure in ("both", "qdl"):
            terms["query_diversity"] = (c.query_diversity_weight, query_diversity(
                out.query_first, labels, c.diversity_margin, c.diversity_alpha, c.diversity_lambda))
        if c.textual_structure in ("both", "qsp"):
            terms["query_similarity_preservation"] = (c.query_similarity_preservation_weight,
                                                      query_similarity_preservation(out.query_first, labels,
                                                                                    c.similarity_tau))
        if out.mu is not None:
            terms["kl"] = (c.kl_weight, kl_divergence(out.mu, out.logvar))
        if out.eps_pred is not None:
            terms["diffusion"] = (c.diffusion_weight, diffusion_noise_mse(out.eps_pred, out.eps_true))
        total = sum(w * v for w, v in terms.values())
        return total, {k: v.detach() for k, (_, v) in terms.items()}
