"""Retrieval metrics of the PRVR protocol: R@1/5/10/100 and SumR.

Rank of query i = 1 + number of videos scored strictly above its own video. The original sorts with an
unstable argsort, so exact ties may order either way there; here ties count in the query's favour
("optimistic"), which is deterministic and equal whenever scores do not tie exactly.
"""

from __future__ import annotations

import torch

from prvr.errors import NonFiniteError

KS = (1, 5, 10, 100)


def ranks_from_scores(scores: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """scores (N, V), gt (N,) video index of each query -> (N,) 1-based ranks."""
    if not torch.isfinite(scores).all():  # NaN is never "higher": a NaN score would rank first
        raise NonFiniteError(f"{int((~torch.isfinite(scores)).sum())} scores are NaN or Inf; refusing to rank them")
    gt_score = scores.gather(1, gt[:, None])  # (N, 1)
    return 1 + (scores > gt_score).sum(dim=1)


def recalls(ranks: torch.Tensor, ks=KS) -> dict[str, float]:
    """Percent of queries with rank <= k, plus SumR (sum of the unrounded recalls)."""
    ranks = ranks.double()
    out = {f"R@{k}": float((ranks <= k).double().mean() * 100) for k in ks}
    out["SumR"] = sum(out[f"R@{k}"] for k in ks)
    return out
