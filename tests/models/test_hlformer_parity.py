"""HLFormer loaded with the original weights reproduces the authors' tensors (tests/golden/hlformer-*, see
README-hlformer.md): forward outputs, encodings, scores, every loss term, the metric, 10 optimiser steps, the
full-width structure, and their checkpoint through `prvr convert-checkpoint` + `prvr eval --save-scores`."""

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from prvr.data.datasets import Batch
from prvr.data.writer import DatasetWriter
from prvr.eval.metrics import ranks_from_scores, recalls
from prvr.models import build_model
from prvr.models.base import TrainStep
from prvr.models.checkpoint import load_checkpoint
from prvr.models.hlformer import HLFormer, HLFormerLoss
from prvr.models.hlformer.attention import gaussian_kernels
from prvr.models.hlformer.convert import config_mapping, convert_state_dict, original_name
from prvr.models.layers import gaussian_kernel
from prvr.models.presets import default_config, load_preset
from prvr.train.optim import BertAdam, param_groups
from tests.conftest import GOLDEN_DIR

ATOL = 1e-5
TERMS = {"clip_nce": "clip_nce", "clip_triplet": "clip_trip", "frame_nce": "frame_nce",
         "frame_triplet": "frame_trip", "query_diversity": "query_diversity", "partial_order": "entailment"}


def load(name):
    z = np.load(GOLDEN_DIR / f"hlformer-{name}-seed0.npz")
    return {k: z[k] for k in z.files}, json.loads(bytes(z["meta"]))


def run_config(original_config):
    return default_config("hlformer").apply(config_mapping(original_config)).check()


def loaded_model(z, meta, prefix):
    model = HLFormer(run_config(meta["config"]).model)
    state = {k[len(prefix) + 1:]: torch.from_numpy(z[k]) for k in z if k.startswith(prefix + "/")}
    model.load_state_dict(convert_state_dict(state, model))
    return model


def t(z, k):
    return torch.from_numpy(z[k])


def close(ours, z, key, atol=ATOL):
    ours = ours.detach().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    np.testing.assert_allclose(ours, z[key], atol=atol, rtol=0, err_msg=key)


@pytest.fixture(scope="module")
def small():
    return load("small")


@pytest.fixture(scope="module")
def model(small):
    z, meta = small
    return loaded_model(z, meta, "state").eval()


@pytest.fixture(scope="module")
def batch(small):
    z, _ = small
    return Batch(clip=t(z, "input/clip_feat"), frames=t(z, "input/frame_feat"), frame_mask=t(z, "input/frame_mask"),
                 text=t(z, "input/query_feat"), text_mask=t(z, "input/query_mask"), labels=t(z, "input/labels"))


@pytest.fixture(scope="module")
def outputs(model, batch):
    with torch.no_grad():
        return model.forward_train(batch)  # eval mode: no dropout, the in-place clamps still apply


# ------------------------------------------------------------------------------------------- structure
def test_parameter_count_small(small):
    _, meta = small
    model = HLFormer(run_config(meta["config"]).model)
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"] == 826_700
    assert len(model.state_dict()) == len(meta["state_shapes"]) == 430


@pytest.mark.parametrize("preset,name,count", [("charades", "cha", 28_429_244), ("tvr", "tvr", 29_911_484),
                                               ("activitynet", "act", 28_429_244)])
def test_full_presets_match_original_structure(preset, name, count):
    _, meta = load(name)
    model = build_model(load_preset(preset, "hlformer").model)  # through the registry, like every caller
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"] == count
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == meta["n_trainable"] == count - 1
    state = model.state_dict()
    assert sum(v.numel() for v in state.values()) == meta["n_state_elements"]
    assert Counter(tuple(v.shape) for v in state.values()) == Counter(tuple(s) for _, s in meta["state_shapes"])
    mapped = {original_name(n): tuple(s) for n, s in meta["state_shapes"]}  # one-to-one, equal shapes
    assert len(mapped) == len(meta["state_shapes"]) == 430
    assert mapped == {k: tuple(v.shape) for k, v in state.items()}
    # the curvature constant: one non-trainable tensor under 41 names, as in the original
    ks = [v for k, v in state.items() if k.endswith("manifold.k")]
    assert len(ks) == 41 and len({v.data_ptr() for v in ks}) == 1 and float(ks[0]) == 1.0


# ------------------------------------------------------------------------------------------- forward
def test_inference_outputs(small, model, batch):
    z, meta = small
    with torch.no_grad():
        videos = model.encode_videos(batch)
        queries = model.encode_queries(batch)
        per_set = model.set_scores(queries, videos)
        score = model.score(queries, videos)
    assert meta["score_weights"] == [model.score_weights()["clip"], model.score_weights()["frame"]]
    close(videos.sets["clip"].tokens, z, "output/encoded_clip")
    close(videos.sets["frame"].tokens, z, "output/encoded_frame")
    close(queries.vectors[:, 0], z, "output/query_embedding")
    close(per_set["clip"], z, "output/clip_scale_scores")
    close(per_set["frame"], z, "output/frame_scale_scores")
    close(score, z, "output/score")


def test_training_outputs(small, model, batch, outputs):
    z, _ = small
    out = outputs
    close(out.query, z, "output/query_embedding")
    close(out.query_second, z, "output/query_embedding")
    for name in ("clip", "frame"):
        tokens = getattr(out, name)
        pool = getattr(model, f"{name}_pooling")
        weights = pool(tokens).squeeze(-1).softmax(-1)
        close(weights, z, f"output/{name}_pool_weights")
        close(model._attention_pool(tokens, pool), z, f"output/{name}_pooled")
        with torch.no_grad():
            raw = torch.einsum("nd,bld->nbl", out.query, tokens).max(-1).values
        close(raw, z, f"output/{name}_scale_scores_unnorm")
    with torch.no_grad():
        x = model.query_encoder(model.query_pos(model.query_proj(batch.text)), key_mask=batch.text_mask)
        logits = model.query_pooling(x).squeeze(-1) * batch.text_mask + (1 - batch.text_mask) * -1e10
    close(x, z, "output/query_tokens")
    close(logits.softmax(-1), z, "output/query_token_weights")
    close(out.curv, z, "output/curv")
    close(out.query * model.textual_alpha.exp(), z, "output/query_tangent")
    close(out.hyp_query, z, "output/hyp_query")
    close(out.hyp_video, z, "output/hyp_video")


def test_branches_fusion_and_lorentz_maps(small, model, batch):
    """Inside the clip block: the 8 branch outputs (4 Euclidean, 4 Lorentz), the Lorentz points into and out of
    the Lorentz attention, the Gaussian priors and the per-position branch weights of the fusion (MAIM)."""
    z, _ = small
    enc = model.clip_encoder
    with torch.no_grad():
        x = model.clip_pos(model.clip_proj(batch.clip))  # (B, 32, D)
        branches = torch.cat([enc.euclidean(x, x, None, enc.priors), enc.lorentz(x, None, enc.priors)])  # (8, B, L, D)
        close(branches.permute(1, 2, 3, 0), z, "debug/clip_branches")
        close(enc.fusion.branch_weights(branches, None).transpose(1, 2), z, "debug/clip_branch_weights")
        for i in (0, 1):
            blk = enc.lorentz.blocks[i]
            points = blk.manifold.expmap0(blk.in_proj(x) * blk.scale_alpha.exp())
            close(points, z, f"debug/clip_h{i}_lorentz_in")
            close(blk.attn(points, None, None if i == 0 else enc.priors[i]), z, f"debug/clip_h{i}_lorentz_out")
        xf, mask = model.pad_frames(batch.frames, batch.frame_mask)
        xf = model.frame_pos(model.frame_proj(xf))
        fb = model.frame_encoder
        frame_branches = torch.cat([fb.euclidean(xf, xf, mask, fb.priors), fb.lorentz(xf, mask, fb.priors)])
        close(fb.fusion.branch_weights(frame_branches, mask).transpose(1, 2), z, "debug/frame_branch_weights")
    priors = gaussian_kernels(32, 4)
    for i, w in enumerate((2, 4, 8), start=1):
        close(priors[i], z, f"debug/gauss_L32_w{w}", atol=0)  # bit for bit
        close(gaussian_kernel(32, w), z, f"debug/gauss_L32_w{w}", atol=2e-7)  # the shared form, to 1 ulp


def test_inference_matches_with_unpadded_frames(small, model):
    """Frames given at the batch's own length are padded to max_ctx_l inside the model."""
    z, _ = small
    frames, mask = t(z, "input/frame_feat"), t(z, "input/frame_mask")
    short = mask.sum(1) < 128
    n = int(mask[short].sum(1).max())
    with torch.no_grad():
        _, frame, _ = model.video_tokens(t(z, "input/clip_feat")[short], frames[short][:, :n], mask[short][:, :n])
    np.testing.assert_allclose(frame.numpy(), z["output/encoded_frame"][short.numpy()], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------- losses, metric
@pytest.mark.parametrize("mode", ["random", "hard", "hard_pool2"])
def test_loss_terms(small, outputs, batch, mode):
    z, meta = small
    cfg = run_config(meta["config"])
    cfg.loss.hard_pool_size = 2 if mode == "hard_pool2" else meta["hard_pool_size"]
    d = f"loss/draws/{mode}/"
    given = {p: (t(z, d + f"{p}_t2v_neg_video"), t(z, d + f"{p}_v2t_neg_query")) for p in ("clip", "frame")}
    step = TrainStep(hard_negative=mode != "random", extras={"triplet_negatives": given})
    total, terms = HLFormerLoss(cfg.loss, cfg.model)(outputs, batch.labels, step)
    assert set(terms) == set(TERMS)
    for ours, theirs in TERMS.items():
        close(terms[ours], z, f"loss/{mode}/{theirs}")
    close(total, z, f"loss/{mode}/total")
    from prvr.models.hlformer.lorentz import half_aperture, oxy_angle

    video = outputs.hyp_video[batch.labels]
    close(oxy_angle(video, outputs.hyp_query, outputs.curv), z, f"loss/{mode}/video_angle")
    close(half_aperture(video, outputs.curv), z, f"loss/{mode}/video_aperture")


def test_metric(small):
    """R@1/5/10/100 of the original validation from its own score matrix."""
    z, meta = small
    gt = torch.tensor([meta["metric_video_ids"].index(q.split("#")[0]) for q in meta["metric_query_ids"]])
    ours = recalls(ranks_from_scores(t(z, "metric/scores"), gt))
    np.testing.assert_allclose([ours[f"R@{k}"] for k in (1, 5, 10, 100)], z["metric/recalls"], atol=1e-9)
    assert ours["SumR"] == pytest.approx(float(z["metric/rsum"]), abs=1e-9)


# ------------------------------------------------------------------------------------------- training
def test_ten_optimiser_steps():
    """The original train loop's 10 steps (2 epochs of warm-up and random negatives, hard negatives from step 7)
    through prvr's optimiser, with branch recompute on: loss terms 1e-5, learning rates, gradients after step 1,
    weights after step 10 (1e-4)."""
    z, meta = load("steps")
    cfg = run_config(meta["config"])
    model = loaded_model(z, meta, "init").train()
    model.set_recompute(2)  # the training default recomputes the branch banks; 2 videos a chunk here
    to_original = {original_name(n): n for n, _ in meta["state_shapes"]}
    groups = param_groups(model, meta["weight_decay"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert {to_original[names[id(p)]] for p in groups[0]["params"]} == set(meta["decayed_params"]) - {"manifold.k"}
    assert {to_original[names[id(p)]] for p in groups[1]["params"]} == set(meta["undecayed_params"])
    optimizer = BertAdam(groups, lr=meta["lr"], warmup=meta["warmup"], t_total=meta["t_total"],
                         b1=meta["b1"], b2=meta["b2"], eps=meta["e"], max_grad_norm=meta["max_grad_norm"])
    criterion = HLFormerLoss(cfg.loss, cfg.model)
    for k in range(1, 11):
        p = f"batch/{k}/"
        b = Batch(clip=t(z, p + "clip_feat"), frames=t(z, p + "frame_feat"), frame_mask=t(z, p + "frame_mask"),
                  text=t(z, p + "query_feat"), text_mask=t(z, p + "query_mask"), labels=t(z, p + "labels"))
        given = {s: (t(z, f"draws/{k}/{s}_t2v_neg_video"), t(z, f"draws/{k}/{s}_v2t_neg_query")) for s in ("clip", "frame")}
        hard = bool(z[f"step/{k}/use_hard_negative"])
        assert hard == ((k - 1) // meta["steps_per_epoch"] >= meta["hard_negative_start_epoch"])
        loss, terms = criterion(model.forward_train(b), b.labels, TrainStep(hard_negative=hard,
                                                                          extras={"triplet_negatives": given}))
        for ours, theirs in TERMS.items():
            close(terms[ours], z, f"step/{k}/loss/{theirs}")
        close(loss, z, f"step/{k}/loss/total")
        assert optimizer.current_lr() == pytest.approx(float(z[f"step/{k}/lr"]), rel=1e-12, abs=1e-15)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if k == 1:
            check_gradients(model, z, to_original)
        optimizer.step()
        if k == 1:  # learning rate 0: nothing moves
            for n, v in model.state_dict().items():
                assert np.array_equal(v.numpy(), z[f"weights1/{to_original[n]}"]), n
    for n, v in model.state_dict().items():
        np.testing.assert_allclose(v.numpy(), z[f"weights10/{to_original[n]}"], atol=1e-4, rtol=0, err_msg=n)


def check_gradients(model, z, to_original):
    """Gradients after the first backward (before clipping), against the original's float32 gradients: per tensor
    within 1e-5 of its magnitude plus 3x the original's own float32 rounding error (its distance to the same step
    in float64, hlformer-steps-fp64); that error is the larger term for the hyperbolic scalars (curvature, Lorentz
    scales and logit biases: up to 2e-3 of their magnitude) and for gradients that vanish mathematically."""
    exact, _ = load("steps-fp64")
    grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == 389 and "manifold.k" not in grads  # every parameter but the constant, as in theirs
    ref = {n: z[f"grad1/{to_original[n]}"] for n in grads}
    for n, g in grads.items():
        noise = np.abs(ref[n] - exact[f"grad1/{to_original[n]}"]).max()
        assert np.abs(g - ref[n]).max() <= 1e-5 * np.abs(ref[n]).max() + 3 * noise, n
    ours_all, ref_all = (np.concatenate([x[n].ravel() for n in grads]) for x in (grads, ref))
    assert np.linalg.norm(ours_all - ref_all) <= 3e-6 * np.linalg.norm(ref_all)  # measured 2.6e-7


def test_first_step_in_float64():
    """Step 1 with model, batch and loss in float64 on both sides: the loss terms agree to 1e-12 and every gradient
    to 1e-11 of its tensor's magnitude (measured <= 1.1e-12), the custom acosh/leaky-clamp backward included;
    gradients that vanish mathematically (softmax-invariant biases) are below 1e-15 on both sides."""
    z, meta = load("steps")
    exact, _ = load("steps-fp64")
    cfg = run_config(meta["config"])
    model = loaded_model(z, meta, "init").double().train()
    b = Batch(**{k: t(z, f"batch/1/{src}").double() for k, src in (
        ("clip", "clip_feat"), ("frames", "frame_feat"), ("frame_mask", "frame_mask"), ("text", "query_feat"),
        ("text_mask", "query_mask"))}, labels=t(z, "batch/1/labels"))
    given = {s: (t(z, f"draws/1/{s}_t2v_neg_video"), t(z, f"draws/1/{s}_v2t_neg_query")) for s in ("clip", "frame")}
    loss, terms = HLFormerLoss(cfg.loss, cfg.model)(model.forward_train(b), b.labels,
                                                    TrainStep(extras={"triplet_negatives": given}))
    for ours, theirs in TERMS.items():
        assert abs(float(terms[ours]) - float(exact[f"loss/{theirs}"])) <= 1e-12, ours
    loss.backward()
    to_original = {original_name(n): n for n, _ in meta["state_shapes"]}
    for n, p in model.named_parameters():
        if p.grad is None:
            assert n == "manifold.k"
            continue
        ref = exact[f"grad1/{to_original[n]}"]
        scale = np.abs(ref).max()
        if scale < 1e-15:
            assert np.abs(p.grad.numpy()).max() < 1e-15, n
        else:
            assert np.abs(p.grad.numpy() - ref).max() <= 1e-11 * scale, n


# ------------------------------------------------------------------------------------------- their checkpoint
def cli(*args):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True)


def test_convert_their_checkpoint_then_eval_gives_their_scores(tmp_path):
    """`prvr convert-checkpoint --model hlformer` on a checkpoint written by the original main.py's save_ckpt, then
    `prvr eval --save-scores` on a dataset in the release layout: the original validation's score matrix."""
    out = tmp_path / "converted.safetensors"
    r = cli("convert-checkpoint", GOLDEN_DIR / "hlformer-authors-small.ckpt", out, "--model", "hlformer")
    assert r.returncode == 0, r.stderr
    model, cfg, state = load_checkpoint(out)
    steps, steps_meta = load("steps")
    ours = model.state_dict()
    assert len(ours) == 430 and state["epoch"] == 4
    for n, _ in steps_meta["state_shapes"]:  # every weight lands on its place (the constant under its 41 names too)
        assert torch.equal(ours[original_name(n)], torch.from_numpy(steps[f"weights10/{n}"])), n
    assert (cfg.model.hidden_size, cfg.model.lorentz_dim, cfg.data.collection) == (32, 15, "charades")

    z, meta = load("eval")
    root = tmp_path / "data"
    with DatasetWriter(root, cfg.data.collection, cfg.data.visual_feature) as w:
        for vid in meta["video_ids"]:
            w.add_video(vid, z[f"frames/{vid}"])
        for cap in meta["caption_file_order"]:
            w.add_caption("val", cap, f"a synthetic caption of {cap.split('#')[0]}", z[f"tokens/{cap}"])
    scores, metrics = tmp_path / "s.npy", tmp_path / "m.json"
    r = cli("eval", "--checkpoint", out, "--data", root, "--split", "val", "--save-scores", scores, "--json", metrics,
            "--quiet")
    assert r.returncode == 0, r.stderr
    S = np.load(scores)  # rows: caption-file order; columns: first appearance in that file
    rows = [meta["query_ids"].index(c) for c in meta["caption_file_order"]]
    videos = list(dict.fromkeys(c.split("#")[0] for c in meta["caption_file_order"]))
    assert videos == meta["video_ids"]
    np.testing.assert_allclose(S, z["scores"][rows], atol=ATOL, rtol=0)
    m = json.loads(metrics.read_text())
    np.testing.assert_allclose([m[f"R@{k}"] for k in (1, 5, 10, 100)], z["recalls"], atol=1e-9)
