"""Shared loss pieces against by-hand computations (fast, in process; part of `make mutate`'s selection)."""

import math

import pytest
import torch

from prvr.models import losses as L


def test_max_similarity_by_hand():
    """(N, D) queries against (B, L, D) tokens of different norms: max over L of the cosine, or of the dot."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, generator=g) * torch.tensor([[0.5], [2.0], [7.0]])
    t = torch.randn(2, 5, 4, generator=g) * (0.5 + 3 * torch.rand(2, 5, 1, generator=g))
    cos = [[max(float(q[n] @ t[b, j]) / (float(q[n].norm()) * float(t[b, j].norm())) for j in range(5))
            for b in range(2)] for n in range(3)]
    dot = [[max(float(q[n] @ t[b, j]) for j in range(5)) for b in range(2)] for n in range(3)]
    got = L.max_similarity(q, t, normalize=True)
    assert got.shape == (3, 2)
    assert got.tolist() == [pytest.approx(row, abs=1e-6) for row in cos]
    assert L.max_similarity(q, t, normalize=False).tolist() == [pytest.approx(row, abs=1e-5) for row in dot]


def test_segment_mean_by_hand():
    """Segments of 3 rows, 0 rows, 1 row and 0 rows (the last one empty too): means, and zeros where empty."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0], [5.0, 0.0]])
    got = L.segment_mean(x, torch.tensor([0, 0, 2, 0]), 4)
    assert got.tolist() == [[3.0, 2.0], [0.0, 0.0], [10.0, 20.0], [0.0, 0.0]]


def test_triplet_draws_follow_the_generator():
    """Random negatives are drawn from the step's generator: the same seed gives the same loss, another seed
    (almost surely) another one; the global RNG is not used."""
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(12, 6, generator=g) * 2 - 1
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])

    def loss(seed, **picks):
        torch.manual_seed(123)  # the global RNG in the same state every time
        return float(L.triplet_ranking(scores, labels, 0.2, False, 3, torch.Generator().manual_seed(seed), **picks))

    assert loss(0) == loss(0) and math.isfinite(loss(0))
    assert len({loss(s) for s in range(6)}) > 1
    # each direction's draw on its own (the other one given)
    assert len({loss(s, v2t_pick=torch.zeros(6, dtype=torch.long)) for s in range(6)}) > 1
    assert len({loss(s, t2v_pick=torch.ones(12, dtype=torch.long)) for s in range(6)}) > 1
