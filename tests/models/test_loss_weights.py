"""DreamPRVR's weighted total: each term carries its own weight from the authors' loss_factor, in the authors'
order, and the diffusion-noise error is a mean. (The values of the terms against the authors' code are in the
parity tests; these tests pin the weights and the reductions by hand.)"""

import pytest
import torch

from prvr.models import build_model
from prvr.models import losses as L
from prvr.models.base import TrainStep
from prvr.models.dreamprvr.convert import config_mapping
from prvr.models.presets import load_preset
from tests.conftest import tiny_model_config
from tests.models.test_model import batch, make_loss

# Configs/cha.py of the authors: loss_factor = [clip nce, frame nce, query diversity, query similarity
# preservation, kl, diffusion]; the two triplet terms have weight 1
AUTHORS_LOSS_FACTOR = [0.02, 0.04, 0.003, 0.002, 1e-4, 1e-3]
TERMS = ["clip_nce", "frame_nce", "query_diversity", "query_similarity_preservation", "kl", "diffusion"]


def test_preset_weights_are_the_authors_in_their_order():
    loss = load_preset("charades").loss
    mapped = config_mapping({"loss_factor": AUTHORS_LOSS_FACTOR})["loss"]
    for term, w in zip(TERMS, AUTHORS_LOSS_FACTOR, strict=True):
        assert getattr(loss, f"{term}_weight") == w == mapped[f"{term}_weight"], term


def test_weighted_total_by_hand():
    cfg = tiny_model_config()
    model = build_model(cfg).train()
    b = batch(cfg=cfg)
    criterion = make_loss(cfg)
    criterion.cfg = load_preset("charades").loss  # the authors' weights on the tiny model
    torch.manual_seed(0)
    total, terms = criterion(model.forward_train(b), b.labels, TrainStep(hard_negative=True))
    assert set(terms) == {*TERMS, "clip_triplet", "frame_triplet"}
    values = {k: float(v) for k, v in terms.items()}
    assert len({round(v, 6) for v in values.values()}) == len(values)  # distinct values: a swapped weight shows
    want = values["clip_triplet"] + values["frame_triplet"] + sum(
        w * values[t] for t, w in zip(TERMS, AUTHORS_LOSS_FACTOR, strict=True))
    assert float(total.detach()) == pytest.approx(want, rel=1e-6)


def test_diffusion_noise_error_is_a_mean():
    eps_true = torch.randn(3, 4, 5)
    eps_pred = eps_true[None].repeat(6, 1, 1, 1)
    eps_pred[0] += 2.0  # one of six steps off by 2 everywhere: mean squared error 4/6
    assert float(L.diffusion_noise_mse(eps_pred, eps_true)) == pytest.approx(4.0 / 6, rel=1e-6)
    # in the model's loss: the reported term is that mean over steps, videos, registers and dimensions
    cfg = tiny_model_config()
    model = build_model(cfg).train()
    b = batch(cfg=cfg)
    torch.manual_seed(0)
    out = model.forward_train(b)
    _, terms = make_loss(cfg)(out, b.labels, TrainStep())
    want = ((out.eps_pred - out.eps_true[None]) ** 2).mean()
    assert out.eps_pred.shape == (cfg.timesteps, 3, cfg.num_registers, cfg.hidden_size)
    assert float(terms["diffusion"].detach()) == pytest.approx(float(want.detach()), rel=1e-6)


def test_kl_by_hand():
    mu, logvar = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    # per video: -0.5 * sum(1 + logvar - mu^2 - exp(logvar)); averaged over the 2 videos
    v0 = -0.5 * ((1 + 0 - 1 - 1) + (1 + 1 - 4 - torch.e))
    v1 = -0.5 * ((1 + 2 - 0 - torch.e ** 2) + (1 + 0 - 0 - 1))
    assert float(L.kl_divergence(mu, logvar)) == pytest.approx(float((v0 + v1) / 2), rel=1e-6)
