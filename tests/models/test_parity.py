"""The model loaded with the original weights reproduces the authors' tensors (tests/golden) within 1e-5."""

from collections import Counter

import numpy as np
import pytest
import torch

from prvr.data.datasets import Batch
from prvr.models import build_model
from prvr.models import losses as L
from prvr.models.dreamprvr import DreamPRVR, DreamPRVRConfig
from prvr.models.dreamprvr.convert import config_mapping, convert_state_dict, original_name
from prvr.models.dreamprvr.diffusion import schedule_coefficients
from prvr.models.presets import default_config, load_preset

ATOL = 1e-5


def model_config_from_original(config: dict) -> DreamPRVRConfig:
    return default_config("dreamprvr").apply({"model": config_mapping(config)["model"]}).model


@pytest.fixture(scope="module")
def loaded(golden):
    z, meta = golden
    model = DreamPRVR(model_config_from_original(meta["config"])).eval()
    state = {k[len("state/"):]: torch.from_numpy(z[k]) for k in z if k.startswith("state/")}
    model.load_state_dict(convert_state_dict(state, model))
    return model


def t(z, k):
    return torch.from_numpy(z[k])


def test_parameter_count_small(golden):
    _, meta = golden
    model = DreamPRVR(model_config_from_original(meta["config"]))
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"] == 1_032_144
    assert len(model.state_dict()) == len(meta["state_shapes"]) == 393


@pytest.mark.parametrize("preset,golden_name", [("activitynet", "act"), ("charades", "cha"), ("tvr", "tvr")])
def test_full_presets_match_original_structure(preset, golden_name, golden_meta):
    meta = golden_meta(golden_name)
    model = build_model(load_preset(preset).model)  # through the registry, like every caller
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"]
    ours = Counter(tuple(v.shape) for v in model.state_dict().values())
    theirs = Counter(tuple(s) for _, s in meta["state_shapes"])
    assert ours == theirs
    # one-to-one name mapping with equal shapes
    state = model.state_dict()
    mapped = {original_name(n): tuple(s) for n, s in meta["state_shapes"]}
    assert len(mapped) == len(meta["state_shapes"])
    assert mapped == {k: tuple(v.shape) for k, v in state.items()}


def test_inference_outputs(golden, loaded):
    z, meta = golden
    batch = Batch(clip=t(z, "input/clip_feat"), frames=t(z, "input/frame_feat"), frame_mask=t(z, "input/frame_mask"),
                  text=t(z, "input/query_feat"), text_mask=t(z, "input/query_mask"))
    with torch.no_grad():
        videos = loaded.encode_videos(batch)
        queries = loaded.encode_queries(batch)
        per_set = loaded.set_scores(queries, videos)
        score = loaded.score(queries, videos)
    assert meta["score_weights"] == [loaded.score_weights()["clip"], loaded.score_weights()["frame"]]
    for name, ours in [("encoded_clip", videos.sets["clip"].tokens), ("encoded_frame", videos.sets["frame"].tokens),
                       ("query_embedding", queries.vectors[:, 0]), ("clip_scale_scores", per_set["clip"]),
                       ("frame_scale_scores", per_set["frame"]), ("score", score)]:
        np.testing.assert_allclose(ours.numpy(), z[f"output/{name}"], atol=ATOL, rtol=0, err_msg=name)


def test_inference_matches_with_unpadded_frames(golden, loaded):
    """Frames given at the batch's own length are padded to max_ctx_l inside the model."""
    z, _ = golden
    n = int(z["input/frame_mask"].sum(1).max())
    frames, mask = t(z, "input/frame_feat"), t(z, "input/frame_mask")
    short = mask.sum(1) < 128
    with torch.no_grad():
        _, frame, _ = loaded.video_tokens(t(z, "input/clip_feat")[short], frames[short][:, :n], mask[short][:, :n])
    np.testing.assert_allclose(frame.numpy(), z["output/encoded_frame"][short.numpy()], atol=5e-6, rtol=0)  # measured 4.8e-7


def test_losses(golden):
    z, meta = golden
    labels = t(z, "loss/labels")
    cfg = meta["loss_cfg"]
    m, alpha, lam = cfg["neg_factor"]
    checks = {
        "clip_nce": L.info_nce(t(z, "loss/scores"), labels),
        "query_similarity_preservation": L.query_similarity_preservation(t(z, "loss/query"), labels,
                                                                         cfg["deterministic_tau"]),
        "query_diversity": L.query_diversity(t(z, "loss/query"), labels, m, alpha, lam),
        "kl": L.kl_divergence(t(z, "loss/kl_mu"), t(z, "loss/kl_logvar")),
    }
    for name, value in checks.items():
        assert abs(float(value) - float(z[f"loss/{name}"])) <= ATOL * max(1.0, abs(float(z[f"loss/{name}"]))), name


def test_diffusion_schedule(golden, loaded):
    z, _ = golden
    coef = schedule_coefficients(5)
    for k in z:
        if k.startswith("diffusion/"):
            np.testing.assert_allclose(coef[k.split("/", 1)[1]], z[k], atol=1e-12, rtol=0)
            np.testing.assert_allclose(getattr(loaded.diffusion, k.split("/", 1)[1]).numpy(), z[k], atol=3e-7, rtol=0)  # float32 buffers: measured 2.6e-8
