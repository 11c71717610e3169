"""The batched losses equal straightforward per-item reference formulations on random inputs."""

import math

import pytest
import torch

from prvr.models import losses as L


def random_case(seed, n_videos=6, shuffle=True):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 4, (n_videos,), generator=g)
    labels = torch.repeat_interleave(torch.arange(n_videos), counts)
    if shuffle:  # queries of a video need not be contiguous
        labels = labels[torch.randperm(len(labels), generator=g)]
    scores = torch.randn(len(labels), n_videos, generator=g, dtype=torch.float64)
    query = torch.randn(len(labels), 16, generator=g, dtype=torch.float64)
    return scores, query, labels


def ref_info_nce(S, labels):
    N, B = S.shape
    t2v = sum(torch.logsumexp(S[j], 0) - S[j, labels[j]] for j in range(N)) / N
    v2t = []
    for b in range(B):
        pos = [j for j in range(N) if labels[j] == b]
        v2t.append(torch.logsumexp(S[:, b], 0) - torch.logsumexp(S[pos, b], 0))
    return t2v + sum(v2t) / B


def ref_qdl(q, labels, m, a, lam):
    x = q / q.norm(dim=1, keepdim=True)
    tot = 0.0
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j and labels[i] == labels[j]:
                c = float(x[i] @ x[j])
                tot += (1 + c) ** lam * math.log(1 + math.exp(a * (c + m)))
    return tot / len(labels)


def ref_qsp(q, labels, tau):
    x = q / q.norm(dim=1, keepdim=True)
    rows = []
    for i in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        z = (x @ x[i]) / tau
        denom = torch.logsumexp(torch.cat([z[:i], z[i + 1:]]), 0)
        rows.append(sum(z[j] - denom for j in pos) / len(pos))
    return -sum(rows) / len(rows)


@pytest.mark.parametrize("seed", range(4))
def test_against_reference(seed):
    S, q, labels = random_case(seed)
    torch.testing.assert_close(L.info_nce(S, labels), ref_info_nce(S, labels))
    assert float(L.query_diversity(q, labels, 0.2, 32, 1)) == pytest.approx(ref_qdl(q, labels, 0.2, 32, 1), rel=1e-9)
    torch.testing.assert_close(L.query_similarity_preservation(q, labels, 0.09), ref_qsp(q, labels, 0.09))


def test_diversity_uses_label_equality_not_contiguity():
    _, q, labels = random_case(7, shuffle=True)
    perm = torch.randperm(len(labels))
    a = L.query_diversity(q, labels, 0.2, 32, 1)
    b = L.query_diversity(q[perm], labels[perm], 0.2, 32, 1)
    torch.testing.assert_close(a, b)


def ref_triplet_hard(S, labels, margin, pool):
    """Hard mode, text->video negative pool of size 1 (deterministic): hardest other video."""
    N, B = S.shape
    t2v = sum(max(0.0, margin + max(float(S[i, b]) for b in range(B) if b != labels[i]) - float(S[i, labels[i]]))
              for i in range(N)) / N
    v2t = 0.0
    for b in range(B):
        pos = [float(S[i, b]) for i in range(N) if labels[i] == b]
        neg = max(float(S[i, b]) for i in range(N) if labels[i] != b)
        v2t += max(0.0, margin + neg - sum(pos) / len(pos))
    return t2v + v2t / B


@pytest.mark.parametrize("seed", range(3))
def test_triplet_hard_against_reference(seed):
    S, _, labels = random_case(seed)
    got = L.triplet_ranking(S, labels, 0.2, hard=True, hard_pool_size=1)
    assert float(got) == pytest.approx(ref_triplet_hard(S, labels, 0.2, 1), rel=1e-9)


def test_triplet_random_negatives_are_other_videos():
    S, _, labels = random_case(3)
    # make every wrong pairing score 0 and positives 1: any legal negative gives zero hinge at margin 0.5
    S = (labels[:, None] == torch.arange(S.shape[1])[None]).double()
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        assert float(L.triplet_ranking(S, labels, 0.5, hard=False, hard_pool_size=20, generator=g)) == 0.0


def test_kl_and_diffusion_mse():
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    assert float(L.kl_divergence(mu, logvar)) == 0.0
    eps = torch.randn(2, 3, 4)
    assert float(L.diffusion_noise_mse(eps[None].repeat(5, 1, 1, 1), eps)) == 0.0


def test_single_video_batch():
    S = torch.randn(2, 1)
    labels = torch.zeros(2, dtype=torch.long)
    assert float(L.triplet_ranking(S, labels, 0.2, False, 20)) == 0.0
    assert torch.isfinite(L.info_nce(S, labels))


def test_triplet_random_negatives_are_uniform_and_picks_replace_the_draws():
    """Random negatives: text->video uniform over the other videos, video->text uniform over the other videos'
    queries (checked through the expected loss with every hinge active); given picks replace the draws."""
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    S = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, 0.5], [0.4, 0.7, 0.6], [0.1, 0.9, 0.2], [0.3, 0.6, 0.0],
                      [0.2, 0.4, 0.8]], dtype=torch.float64)
    margin, B = 10.0, 3  # every hinge active: the loss is linear in the chosen negatives
    pos = labels[:, None] == torch.arange(B)[None]
    t2v = (margin + (S * ~pos).sum(1) / (B - 1) - S[torch.arange(6), labels]).mean()
    v2t = (margin + (S * ~pos).sum(0) / (~pos).sum(0) - (S * pos).sum(0) / pos.sum(0)).mean()
    runs = [float(L.triplet_ranking(S, labels, margin, False, 20, torch.Generator().manual_seed(s))) for s in range(3000)]
    assert sum(runs) / len(runs) == pytest.approx(float(t2v + v2t), abs=0.01)  # sd of the mean ~0.003
    # picks: positions in the sorted scores (text->video: positive first; video->text: negatives descending)
    t2v_pick = torch.tensor([1, 2, 1, 1, 2, 1])
    v2t_pick = torch.tensor([0, 2, 4])
    got = L.triplet_ranking(S, labels, margin, False, 20, t2v_pick=t2v_pick, v2t_pick=v2t_pick)
    neg_t2v = torch.tensor([0.3, 0.2, 0.6, 0.2, 0.0, 0.4], dtype=torch.float64)  # the picked column after the positive
    neg_v2t = torch.tensor([S[[2, 3, 4, 5], 0].sort(descending=True).values[0],
                            S[[0, 1, 5], 1].sort(descending=True).values[2],
                            S[[0, 1, 2, 3, 4], 2].sort(descending=True).values[4]], dtype=torch.float64)
    want = (margin + neg_t2v - S[torch.arange(6), labels]).mean() + (
        margin + neg_v2t - (S * pos).sum(0) / pos.sum(0)).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-12)
