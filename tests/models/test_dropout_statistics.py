"""Training-mode dropout of the fused branch bank is the textbook one in distribution: over many draws, the fused path
(unscaled masks drawn 15 bits at a time, 1/(1-p) folded into the next matmul) and the plain per-branch blocks with
nn.Dropout (`reference_path()`) give outputs and gradients with the same mean and the same variance."""

import torch

from prvr.models.fused import reference_path
from prvr.models.layers import StackedAttentionBlocks, gaussian_kernel

DRAWS = 300


def draws(bank, x, ctx, mask, scale, w, reference: bool, seed: int):
    torch.manual_seed(seed)
    outs, grads = [], []
    params = list(bank.parameters())
    for _ in range(DRAWS):
        with reference_path(reference):
            out = bank(x, ctx, mask, scale)  # (A, B, L, D)
        g = torch.autograd.grad((out * w).sum(), params)
        outs.append(out.detach().flatten())
        grads.append(torch.cat([t.flatten() for t in g]))
    return torch.stack(outs).double(), torch.stack(grads).double()


def z_scores(a, b):
    keep = (a.var(0) > 1e-12) & (b.var(0) > 1e-12)  # elements that dropout makes random
    z = (a.mean(0) - b.mean(0)) / torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    return z[keep], (a.var(0) / b.var(0))[keep]


def test_fused_dropout_matches_the_plain_path_in_distribution():
    torch.manual_seed(0)
    A, B, L, K, D = 8, 1, 8, 2, 8
    bank = StackedAttentionBlocks(A, D, 2, dropout=0.25).train()
    for p in bank.parameters():
        torch.nn.init.normal_(p, 0, 0.2)
    x = torch.randn(B, L, D)
    ctx = torch.cat([x, torch.randn(B, K, D)], 1)
    mask = torch.ones(B, L + K)
    mask[0, L - 3:L] = 0
    scale = torch.stack([torch.ones(L, L)] + [gaussian_kernel(L, w) for w in (0.25, .5, 1, 2, 4, 8, 16)])
    scale = torch.cat([scale, torch.ones(A, L, K)], -1)
    w = torch.randn(A, B, L, D)
    fused = draws(bank, x, ctx, mask, scale, w, False, 1)
    plain = draws(bank, x, ctx, mask, scale, w, True, 2)
    for what, a, b in (("output", fused[0], plain[0]), ("gradient", fused[1], plain[1])):
        z, var_ratio = z_scores(a, b)
        assert len(z) > 500, what
        # independent samples of one distribution: z ~ N(0, 1) per element, correlated across elements through
        # the shared inputs (measured: z mean -0.09 / -0.04, sd 0.93 / 0.97 for outputs / gradients; outputs 2 %
        # too large would give sd 7.3)
        assert abs(float(z.mean())) < 0.3 and 0.8 < float(z.std()) < 1.25, (what, float(z.mean()), float(z.std()))
        assert float((z.abs() > 5).float().mean()) < 1e-3, what
        # same spread: a wrong 1/(1-p), a wrong rate or masks shared between elements would move this (measured
        # 1.004 / 1.002; outputs 2 % too large: 1.045)
        assert 0.97 < float(var_ratio.median()) < 1.03, (what, float(var_ratio.median()))
