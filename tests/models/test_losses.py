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
