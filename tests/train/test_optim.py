import pytest
import torch

from prvr.models import build_model
from prvr.models.dreamprvr.convert import original_name
from prvr.train.optim import BertAdam, no_decay_names, param_groups, warmup_linear
from tests.conftest import tiny_model_config

ORIGINAL_NO_DECAY = ["bias", "LayerNorm.bias", "LayerNorm.weight"]


def test_decay_groups_match_the_original_rule(golden):
    _, meta = golden
    model = build_model(tiny_model_config())
    ours = dict(model.named_parameters())
    exempt = no_decay_names(model)
    checked = 0
    for orig, _ in meta["state_shapes"]:
        mine = original_name(orig)
        if mine not in ours:
            continue
        assert (mine not in exempt) == (not any(nd in orig for nd in ORIGINAL_NO_DECAY)), orig
        checked += 1
    assert checked > 300


def test_schedule():
    assert warmup_linear(0.0, 0.01) == 0.0
    assert warmup_linear(0.005, 0.01) == pytest.approx(0.5)
    assert warmup_linear(0.01, 0.01) == pytest.approx(1.0)
    assert warmup_linear(0.505, 0.01) == pytest.approx(0.5)
    assert warmup_linear(1.0, 0.01) == 0.0


def reference_step(p, grad, state, lr, wd, t_total, warmup=0.1, b1=0.9, b2=0.999, eps=1e-6, clip=1.0):
    g = grad.clone()
    n = g.norm()
    g = g * min(1.0, clip / (float(n) + 1e-6))
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    update = state["m"] / (state["v"].sqrt() + eps) + wd * p
    lr_t = lr * warmup_linear(state["step"] / t_total, warmup)
    state["step"] += 1
    return p - lr_t * update


def test_bert_adam_against_reference():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    opt = BertAdam([{"params": [params[0]], "weight_decay": 0.01}, {"params": [params[1]], "weight_decay": 0.0}],
                   lr=0.1, warmup=0.1, t_total=10)
    ref = [p.detach().clone() for p in params]
    states = [{"m": torch.zeros_like(p), "v": torch.zeros_like(p), "step": 0} for p in params]
    for _ in range(6):
        grads = [torch.randn_like(p) * 3 for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        ref = [reference_step(r, g, s, 0.1, wd, 10) for r, g, s, wd in zip(ref, grads, states, (0.01, 0.0), strict=True)]
        for p, r in zip(params, ref, strict=True):
            torch.testing.assert_close(p.detach(), r, atol=1e-6, rtol=1e-6)


def test_param_groups_cover_trainable_params():
    model = build_model(tiny_model_config())
    groups = param_groups(model, 0.01)
    n = sum(len(g["params"]) for g in groups)
    assert n == sum(1 for p in model.parameters() if p.requires_grad)
    frozen = model.denoiser.time_embed.table.weight
    assert not frozen.requires_grad and all(frozen is not p for g in groups for p in g["params"])
