"""Every DreamPRVR loss term and the weighted total against the authors' code (tests/golden/dreamprvr-losses-seed0.npz).

One training forward pass of the small-seed0 model (`model.train()`, every dropout 0) on small-seed0's inputs, with
the original's textual perturbation draws and triplet negatives fed in (`TrainStep.draws`), random and hard
negatives. Terms are compared by value through the model's own loss (`build_loss`) with the Charades weights, so a
reversed weight, a summed instead of averaged error or a wrong negative fails here. See
tests/golden/README-dreamprvr.md for how the file was made.
"""

import json

import numpy as np
import pytest
import torch

from prvr.data.datasets import Batch
from prvr.models import build_loss
from prvr.models.base import TrainStep
from prvr.models.dreamprvr import DreamPRVR
from prvr.models.dreamprvr.convert import config_mapping, convert_state_dict
from prvr.models.presets import default_config
from tests.conftest import GOLDEN_DIR

TERMS = ("clip_nce", "clip_triplet", "frame_nce", "frame_triplet", "query_diversity",
         "query_similarity_preservation", "kl", "diffusion")
# measured at this commit: terms within 9.5e-7 (clip info-NCE, ~5.4), total 1.2e-7, forward tensors 9.5e-7
RTOL = 1e-5  # terms, relative to max(1, |value|)
RTOL_TOTAL = 1e-6  # the weighted total (~1.2 and ~1.5)
ATOL_T = 1e-5  # forward tensors


def load(name):
    z = np.load(GOLDEN_DIR / name)
    return {k: z[k] for k in z.files if k != "meta"}, json.loads(bytes(z["meta"]))


def run_config(original: dict):
    """prvr's run config from the original's flat config (model + loss, the Charades weights)."""
    return default_config("dreamprvr").apply(config_mapping(original))


@pytest.fixture(scope="module")
def case():
    small, small_meta = load("small-seed0.npz")
    z, meta = load("dreamprvr-losses-seed0.npz")
    cfg = run_config({**meta["config"], **meta["loss_cfg"]})
    model = DreamPRVR(cfg.model)
    model.load_state_dict(convert_state_dict({k[6:]: torch.from_numpy(v) for k, v in small.items()
                                              if k.startswith("state/")}, model))
    model.train()  # the train=True path; every dropout is 0 in this config
    assert cfg.model.drop == cfg.model.input_drop == 0.0
    t = {k: torch.from_numpy(v) for k, v in z.items()}
    batch = Batch(clip=t["input/clip_feat"], frames=t["input/frame_feat"], frame_mask=t["input/frame_mask"],
                  text=t["input/query_feat"], text_mask=t["input/query_mask"], labels=t["input/labels"])
    draws = {"perturbation_alpha": t["draws/alpha"], "perturbation_beta": t["draws/beta"]}
    out = model.forward_train(batch, draws=draws)
    return cfg, model, batch, out, t, meta


def test_config_is_the_charades_loss(case):
    cfg, *_ = case
    lc = cfg.loss
    assert (lc.clip_nce_weight, lc.frame_nce_weight, lc.query_diversity_weight,
            lc.query_similarity_preservation_weight, lc.kl_weight, lc.diffusion_weight) == (
        0.02, 0.04, 0.003, 0.002, 1e-4, 1e-3)
    assert (lc.diversity_margin, lc.diversity_alpha, lc.diversity_lambda) == (0.2, 32, 1)
    assert (lc.similarity_tau, lc.margin, lc.hard_pool_size) == (0.01, 0.2, 3)


def test_training_forward_tensors(case):
    _, model, _, out, t, _ = case
    got = {"query_first": out.query_first, "query_second": out.query, "mu": out.mu, "logvar": out.logvar,
           "eps_true": out.eps_true, "eps_pred": out.eps_pred, "encoded_clip": out.clip, "encoded_frame": out.frame}
    for name, value in got.items():
        np.testing.assert_allclose(value.detach().numpy(), t[f"train/{name}"], atol=ATOL_T, rtol=0, err_msg=name)


@pytest.mark.parametrize("mode", ["random", "hard"])
def test_every_term_and_the_weighted_total(case, mode):
    cfg, model, batch, out, t, meta = case
    draws = {f"{s}_t2v": t[f"draws/{mode}/{s}_t2v_draw"] for s in ("clip", "frame")}
    if mode == "random":
        draws.update({f"{s}_v2t": t[f"draws/{mode}/{s}_v2t_draw"] for s in ("clip", "frame")})
    criterion = build_loss(cfg.loss, cfg.model)
    total, terms = criterion(out, batch.labels, TrainStep(hard_negative=mode == "hard", draws=draws))
    assert sorted(terms) == sorted(TERMS)
    for name in TERMS:
        ref = float(t[f"loss/{mode}/{name}"])
        assert abs(float(terms[name]) - ref) <= RTOL * max(1.0, abs(ref)), (name, float(terms[name]), ref)
    ref = float(t[f"loss/{mode}/total"])
    assert abs(float(total.detach()) - ref) <= RTOL_TOTAL * max(1.0, abs(ref)), (float(total.detach()), ref)
    assert ref == pytest.approx(meta["totals"][mode], abs=0)


@pytest.mark.parametrize("mode", ["random", "hard"])
def test_the_triplet_negatives_are_the_originals(case, mode):
    """The recorded positions select the same negative videos and queries as in the original."""
    from prvr.models.losses import max_similarity

    _, _, batch, out, t, _ = case
    labels = batch.labels
    for scale, tokens in (("clip", out.clip), ("frame", out.frame)):
        cos = max_similarity(out.query, tokens, normalize=True).detach()  # (N, B)
        np.testing.assert_allclose(cos.numpy(), t[f"train/{scale}_scale_scores"], atol=2e-6, rtol=0)  # measured 1.5e-7
        pos = labels[:, None] == torch.arange(cos.shape[1])[None]
        order = cos.masked_fill(pos, float("inf")).argsort(dim=1, descending=True)
        k = t[f"draws/{mode}/{scale}_t2v_draw"]
        assert order.gather(1, k[:, None]).squeeze(1).tolist() == t[f"draws/{mode}/{scale}_t2v_neg"].tolist()
        if mode == "random":
            v_order = cos.T.masked_fill(pos.T, float("-inf")).argsort(dim=1, descending=True)
            k = t[f"draws/{mode}/{scale}_v2t_draw"]
            assert v_order.gather(1, k[:, None]).squeeze(1).tolist() == t[f"draws/{mode}/{scale}_v2t_neg"].tolist()
