"""The fused training paths equal the plain ones in training mode, dropout on, gradients included: the masks the
fused kernel draws are recorded and replayed into the textbook blocks. Activation recomputation over several
chunks of videos (the training default) gives the same loss and gradients as keeping every activation."""

import pytest
import torch
from torch import nn

from prvr.models import build_model, fused
from prvr.models.base import TrainStep
from prvr.models.layers import StackedAttentionBlocks, gaussian_kernel
from tests.conftest import tiny_model_config
from tests.models.test_model import batch, make_loss


class Replay(nn.Module):
    """Inverted dropout with given masks (True = dropped), one per call, in order."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.masks = p, []

    def forward(self, x):
        mask = self.masks.pop(0)
        assert mask.shape == x.shape
        return x.masked_fill(mask, 0.0) / (1 - self.p)


def stacked_case(p: float, seed: int = 0):
    torch.manual_seed(seed)
    D, L, K, A, B = 32, 16, 3, 8, 5
    bank = StackedAttentionBlocks(A, D, 4, dropout=p).train()
    for prm in bank.parameters():
        nn.init.normal_(prm, 0, 0.2)
    x = torch.randn(B, L, D, requires_grad=True)
    regs = torch.randn(B, K, D, requires_grad=True)
    mask = (torch.rand(B, L + K) > 0.2).float()
    mask[:, L:] = 1
    scale = torch.stack([torch.ones(L, L)] + [gaussian_kernel(L, w) for w in (0.25, .5, 1, 2, 4, 8, 16)])
    scale = torch.cat([scale, torch.ones(A, L, K)], -1)
    return bank, x, regs, mask, scale


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_fused_bank_equals_plain_blocks_with_dropout_and_grad(p, monkeypatch):
    bank, x, regs, mask, scale = stacked_case(p)
    A, (B, L, D) = len(bank.blocks), x.shape
    drawn = []
    real = fused.drop_mask

    def recording(shape, p_, device):
        m = real(shape, p_, device)
        drawn.append(m)
        return m

    monkeypatch.setattr(fused, "drop_mask", recording)
    ctx = torch.cat([x, regs], 1)
    out = bank(x, ctx, mask, scale)  # (A, B, L, D), the fused training kernel
    monkeypatch.setattr(fused, "drop_mask", real)
    attn, after_attn, hidden, after_ffn = drawn  # the four dropout sites of a block, for all branches at once
    assert attn.shape == (A, B, 4, L, L + 3) and hidden.shape == (A, B * L, 4 * D)
    assert 0.5 * p < float(hidden.float().mean()) < 1.5 * p  # dropout really ran
    for a, blk in enumerate(bank.blocks):  # the textbook blocks, with the same masks
        blk.attn.drop, blk.ffn.drop, blk.drop = Replay(p), Replay(p), Replay(p)
        blk.attn.drop.masks = [attn[a]]
        blk.ffn.drop.masks = [hidden[a].view(B, L, 4 * D)]
        blk.drop.masks = [after_attn[a].view(B, L, D), after_ffn[a].view(B, L, D)]
    with fused.reference_path():
        ref = bank(x, ctx, mask, scale)
    assert all(not m.masks for blk in bank.blocks for m in (blk.attn.drop, blk.ffn.drop, blk.drop))
    torch.testing.assert_close(out, ref, atol=5e-6, rtol=0)  # measured 5e-7
    w = torch.randn_like(out)
    params = [x, regs, *bank.parameters()]
    g_fused = torch.autograd.grad((out * w).sum(), params)
    g_ref = torch.autograd.grad((ref * w).sum(), params)
    for name, a, b in zip(["x", "registers", *(n for n, _ in bank.named_parameters())], g_fused, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=0, msg=name)  # measured 8e-6


def test_fused_single_query_attention_with_dropout_and_grad():
    """The fusion's one-row attention (K/V folded into the query) draws the same dropout as the plain form."""
    from prvr.models.layers import MultiHeadAttention

    torch.manual_seed(0)
    B, L, D, h = 4, 12, 32, 4
    mha = MultiHeadAttention(D, h, dropout=0.4).train()
    for prm in mha.parameters():
        nn.init.normal_(prm, 0, 0.3)
    x, ctx = torch.randn(B, 1, D, requires_grad=True), torch.randn(B, L, D, requires_grad=True)
    mask = (torch.rand(B, L) > 0.3).float()
    mask[:, 0] = 1
    torch.manual_seed(7)
    out = mha(x, ctx, mask)
    torch.manual_seed(7)
    with fused.reference_path():
        ref = mha(x, ctx, mask)
    torch.manual_seed(7)
    with fused.reference_path():
        assert not torch.allclose(ref, mha(x, ctx, mask.flip(1)))  # the mask matters
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)  # measured 2.5e-6 (values and gradients)
    w = torch.randn_like(out)
    params = [x, ctx, *mha.parameters()]
    for a, b in zip(torch.autograd.grad((out * w).sum(), params), torch.autograd.grad((ref * w).sum(), params),
                    strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def _loss_and_grads(model, criterion, b, seed=3):
    torch.manual_seed(seed)
    loss, _ = criterion(model.forward_train(b), b.labels, TrainStep())
    model.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_multi_chunk_recompute_equals_keeping_activations(monkeypatch):
    """Training mode, dropout on, 7 videos recomputed 2 at a time (4 chunks, the last one short): the checkpointed
    backward replays each chunk's dropout masks, so loss and gradients equal those of the same chunked forward
    with every activation kept."""
    from prvr.models.dreamprvr import registers

    cfg = tiny_model_config()
    model = build_model(cfg).train()
    criterion = make_loss(cfg)
    b = batch(n_videos=7, caps=(2, 1, 3, 1, 2, 1, 1), lens=(5, 40, 200, 33, 128, 7, 90), cfg=cfg)
    model.set_recompute(2)
    calls = []
    real = registers.checkpoint

    def counting(fn, *args, **kw):
        calls.append(len(args[0]))
        return real(fn, *args, **kw)

    monkeypatch.setattr(registers, "checkpoint", counting)
    loss_ckpt, g_ckpt = _loss_and_grads(model, criterion, b)
    assert calls == [2, 2, 2, 1] * 2  # clip and frame branch, four chunks each
    monkeypatch.setattr(registers, "checkpoint", lambda fn, *args, **kw: fn(*args))  # same chunks, no recompute
    loss_kept, g_kept = _loss_and_grads(model, criterion, b)
    assert torch.equal(loss_ckpt, loss_kept)
    assert g_ckpt.keys() == g_kept.keys() and len(g_ckpt) > 300
    for name in g_ckpt:
        torch.testing.assert_close(g_ckpt[name], g_kept[name], atol=1e-6, rtol=0, msg=name)  # measured 0
    # and the dropout masks really differ from another draw: a different seed changes the loss
    assert not torch.equal(_loss_and_grads(model, criterion, b, seed=4)[0], loss_kept)
