"""Reference tensors from the ORIGINAL HLFormer code (lijun2005/ICCV25-HLFormer) for prvr's parity tests.

    python bench/reference/hlformer.py --original /tmp/orig-hlformer/src --out tests/golden

needs a Python with torch==2.13.0, numpy, h5py, easydict, pyyaml, tqdm, einops, scipy and geoopt==0.5.1 (the
original's Lorentz manifold subclasses geoopt's). Writes (see tests/golden/README-hlformer.md):

- ``hlformer-small-seed0.npz``: state, inputs, every encoding, score, loss term and a metric, small model;
- ``hlformer-steps-seed0.npz``: 10 optimiser steps of the original train loop on recorded batches;
- ``hlformer-{cha,tvr,act}-seed0.npz``: parameter count and state-dict shapes of the released configs;
- ``hlformer-authors-small.ckpt``: a checkpoint written by the original's own ``save_ckpt``;
- ``hlformer-steps-fp64-seed0.npz``: step 1 of those steps again in float64 (loss terms, gradients);
- ``hlformer-eval-seed0.npz``: that checkpoint's model evaluated by the original validation on a val split of
  its own (raw features, caption file, score matrix, recalls), for ``prvr convert-checkpoint`` + ``prvr eval``.

Everything runs on CPU, single-threaded, seeded. The synthetic data is written to a temporary folder in the
release's on-disk layout (BigFile features, caption files, RoBERTa-style hdf5 token features) and read by the
original's ``get_datasets``, so the inputs go through the original data pipeline. Runtime patches are listed
in ``_common_hlformer.py`` (stubs for unused imports, ``Tensor.cuda`` -> identity, config import without
``os.makedirs``, ``sys.argv`` for importing ``main.py``, recording wrappers around the loss); besides those,
this script only overrides config values (widths, dropout, batch size, loader workers, hard-negative epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from _common_hlformer import TERM_FACTOR, TERMS, LossProbe, load_config, load_original, to_np, write_npz

MIRROR_COMMIT = "332a0245e712ed59e2da172440b09d54fd4d5a5a"
SMALL = dict(q_feat_size=40, hidden_size=64, n_heads=4, lorentz_dim=31)  # visual 48 comes from the features
STEPS = dict(q_feat_size=20, hidden_size=32, n_heads=4, lorentz_dim=15)  # visual 24
FULL_VISUAL_DIM = {"cha": 1024, "tvr": 3072, "act": 1024}  # i3d_rgb_lgi / i3d_resnet / i3d feature sizes
ISSUE_COUNTS = {"cha": 28_429_244, "tvr": 29_911_484, "act": 28_429_244}
# the original config's absolute paths are kept in every config written out;
# these are swapped only while running
PATH_KEYS = ("root", "data_root", "model_root", "ckpt_path")


# --------------------------------------------------------------------------------------------- synthetic data
def caption_ids(vid: str, n: int) -> list[str]:
    return [f"{vid}#enc#{i}" for i in range(n)]


def make_collection(rng: np.random.Generator, root: Path, name: str, dv: int, dq: int,
                    train: dict[str, tuple[int, list[int]]], val: dict[str, tuple[int, list[int]]],
                    shuffle_val: bool) -> dict[str, Any]:
    """Write a collection in the release layout; return the raw frames and raw token features.

    ``train`` / ``val``: video id -> (number of raw frames, token count of each caption).
    """
    frames = {vid: rng.standard_normal((n, dv)).astype(np.float32)
              for vid, (n, _) in {**train, **val}.items()}
    tokens: dict[str, np.ndarray] = {}
    split_lines: dict[str, list[str]] = {}
    for split, videos in (("train", train), ("val", val)):
        lines = []
        for vid, (_, lengths) in videos.items():
            for cap, length in zip(caption_ids(vid, len(lengths)), lengths, strict=True):
                tokens[cap] = rng.standard_normal((length, dq)).astype(np.float32)
                lines.append(f"{cap} a synthetic caption of {vid}")
        if split == "val" and shuffle_val:
            lines = [lines[i] for i in rng.permutation(len(lines))]
        split_lines[split] = lines
    split_lines["test"] = split_lines["val"]
    feat = root / name / "FeatureData" / "synthetic"
    text = root / name / "TextData"
    feat.mkdir(parents=True)
    text.mkdir(parents=True)
    names, rows = [], []
    video2frames = {}
    for vid, x in frames.items():
        video2frames[vid] = [f"{vid}_{i}" for i in range(len(x))]
        names += video2frames[vid]
        rows.append(x)
    (feat / "shape.txt").write_text(f"{len(names)} {dv}\n")
    (feat / "id.txt").write_text(" ".join(names) + "\n")
    np.concatenate(rows).astype(np.float32).tofile(feat / "feature.bin")
    (feat / "video2frames.txt").write_text(repr(video2frames))
    for split, lines in split_lines.items():
        (text / f"{name}{split}.caption.txt").write_text("".join(line + "\n" for line in lines))
    with h5py.File(text / f"roberta_{name}_query_feat.hdf5", "w") as f:
        for cap, x in tokens.items():
            f.create_dataset(cap, data=x)
    val_order = [line.split(" ")[0] for line in split_lines["val"]]
    return dict(frames=frames, tokens=tokens, val_caption_order=val_order)


def load_data(orig: SimpleNamespace, cfg: dict[str, Any], root: Path, name: str) -> SimpleNamespace:
    """The original ``get_datasets`` on the synthetic collection (``cfg`` gains ``visual_feat_dim``)."""
    saved = {k: cfg[k] for k in (*PATH_KEYS, "collection", "visual_feature")}
    cfg.update(data_root=str(root), collection=name, visual_feature="synthetic", num_workers=0,
               pin_memory=False)
    out = orig.main.get_datasets(cfg)
    cfg.update(saved)  # the config keeps the release's paths and names
    return SimpleNamespace(train=out[1], val_videos=out[2], val_queries=out[3])


def recording_collate(orig: SimpleNamespace, log: list[dict[str, list[str]]]):
    """``collate_train`` that also notes the video / caption ids in batch order (it sorts its input)."""

    def collate(data: list[tuple]) -> dict[str, Any]:
        batch = orig.data_provider.collate_train(data)
        log.append(dict(video_ids=[x[5] for x in data], cap_ids=[c for x in data for c in x[4]]))
        return batch

    return collate


def batch_arrays(batch: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/clip_feat": to_np(batch["clip_video_features"]),
            f"{prefix}/frame_feat": to_np(batch["frame_video_features"]),
            f"{prefix}/frame_mask": to_np(batch["videos_mask"]),
            f"{prefix}/query_feat": to_np(batch["text_feat"]),
            f"{prefix}/query_mask": to_np(batch["text_mask"]),
            f"{prefix}/labels": np.array(batch["text_labels"], np.int64)}


def loss_arrays(rec: dict[str, Any], prefix: str, draws_prefix: str) -> dict[str, np.ndarray]:
    out = {f"{prefix}/{t}": to_np(rec["terms"][t]) for t in TERMS}
    out[f"{prefix}/total"] = to_np(rec["total"])
    out.update({f"{draws_prefix}/{k}": v for k, v in rec["draws"].items()})
    return out


def build_model(orig: SimpleNamespace, cfg: dict[str, Any]) -> torch.nn.Module:
    orig.utils.set_seed(cfg["seed"])  # as main.py: seed, (data: no draws), then the model
    return orig.get_models(cfg)


def state_arrays(model: torch.nn.Module, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": to_np(v) for k, v in model.state_dict().items()}


def config_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool, list, type(None)))}


# ----------------------------------------------------------------------------- a) forward + losses + metric
def make_small(orig: SimpleNamespace, tmp: Path, out: Path) -> None:
    rng = np.random.default_rng(0)
    # video -> (raw frames, token counts of its captions); s0 and s2 are shorter than the 32-clip grid,
    # s1 (300 frames) is sampled down to 128, s3 has exactly 128; one caption (s1#enc#1) is cut to 30 tokens
    train = {"s0": (7, [9, 14]), "s1": (300, [12, 34, 6]), "s2": (24, [17]), "s3": (128, [8, 21]),
             "s4": (57, [25]), "s5": (163, [11, 7, 30])}
    n_val = [int(n) for n in rng.integers(5, 260, 12)]
    n_caps = [4, 3, 2, 5, 3, 4, 3, 2, 4, 3, 5, 2]  # 40 captions
    val = {f"w{i}": (n_val[i], [int(x) for x in rng.integers(4, 34, n_caps[i])]) for i in range(12)}
    raw = make_collection(rng, tmp, "hlsmall", 48, 40, train, val, shuffle_val=True)

    cfg = load_config(orig.src, "cha")
    cfg.update(SMALL)
    data = load_data(orig, cfg, tmp, "hlsmall")
    model = build_model(orig, cfg)
    arrays = state_arrays(model, "state")
    model.eval()

    # the batch: the original collate on the original dataset items of all 6 training videos
    order: list[dict[str, list[str]]] = []
    ds = data.train.dataset
    batch = recording_collate(orig, order)([ds[i] for i in range(len(ds))])
    video_ids, cap_ids = order[0]["video_ids"], order[0]["cap_ids"]
    arrays.update({f"raw_frames/{i}": raw["frames"][v] for i, v in enumerate(video_ids)})
    arrays.update({f"raw_tokens/{j}": raw["tokens"][c] for j, c in enumerate(cap_ids)})
    arrays.update(batch_arrays(batch, "input"))

    with torch.no_grad():
        cap, handles = capture(orig, model)
        try:
            outputs = model(batch)
        finally:
            for h in handles:
                h.remove()
        (clip_s, clip_s_, label_dict, frame_s, frame_s_, curv, hyp_query, hyp_video, _, query_emb) = outputs
        enc_frame, enc_clip = model.encode_context(
            batch["clip_video_features"], batch["frame_video_features"], batch["videos_mask"])
        inf_clip, inf_frame = model.get_pred_from_raw_query(batch["text_feat"], batch["text_mask"], None,
                                                            enc_clip, enc_frame)
        assert torch.equal(inf_clip, clip_s) and torch.equal(inf_frame, frame_s)
        sft = cfg["sft_factor"]
        arrays.update({
            "output/encoded_clip": to_np(enc_clip), "output/encoded_frame": to_np(enc_frame),
            "output/query_tokens": to_np(cap["query_tokens"]),
            "output/query_token_weights": to_np(F.softmax(orig.model_module.mask_logits(
                cap["query_token_logits"], batch["text_mask"].unsqueeze(2)), dim=1).squeeze(-1)),
            "output/query_embedding": to_np(query_emb),
            "output/clip_scale_scores": to_np(clip_s), "output/clip_scale_scores_unnorm": to_np(clip_s_),
            "output/frame_scale_scores": to_np(frame_s), "output/frame_scale_scores_unnorm": to_np(frame_s_),
            "output/score": to_np(cfg["clip_scale_w"] * clip_s + cfg["frame_scale_w"] * frame_s),
            "output/clip_pool_weights": to_np(F.softmax(cap["clip_pool_logits"], dim=1).squeeze(-1)),
            "output/frame_pool_weights": to_np(F.softmax(cap["frame_pool_logits"], dim=1).squeeze(-1)),
            "output/clip_pooled": to_np(model.get_modularized_clips(enc_clip)),
            "output/frame_pooled": to_np(model.get_modularized_frames(enc_frame, batch["videos_mask"])),
            "output/curv": to_np(curv),
            "output/query_tangent": to_np(cap["exp_map0_in"][0]),
            "output/video_tangent": to_np(cap["exp_map0_in"][1]),
            "output/hyp_query": to_np(hyp_query), "output/hyp_video": to_np(hyp_video),
            "debug/clip_branches": to_np(torch.stack([cap[f"clip_branch{i}"] for i in range(8)], dim=-1)),
            "debug/clip_weight_tokens": to_np(torch.cat(cap["clip_ca"], dim=1)),
            "debug/clip_branch_weights": to_np(F.softmax(cap["clip_layer2"].permute(0, 2, 1) / sft, dim=-1)),
            "debug/frame_branch_weights": to_np(
                F.softmax(cap["frame_layer2"].permute(0, 2, 1) / sft, dim=-1)),
        })
        assert torch.equal(cap["exp_map0_out"][0], hyp_query)
        assert torch.equal(cap["exp_map0_out"][1], hyp_video)
        for i in (0, 1):
            arrays[f"debug/clip_h{i}_lorentz_in"] = to_np(cap[f"clip_h{i}_in"])
            arrays[f"debug/clip_h{i}_lorentz_out"] = to_np(cap[f"clip_h{i}_out"])
        gauss = model.clip_encoder.e_attns[1].self
        for length in (32,):
            for wid in (2, 4, 8):
                arrays[f"debug/gauss_L{length}_w{wid}"] = to_np(gauss.generate_gauss_weight(length, wid))

        # losses: random negatives, hard negatives (config pool 20), hard negatives with pool 2
        criterion = orig.get_losses(cfg)
        pool2 = orig.get_losses({**cfg, "hard_pool_size": 2})
        for mode, crit, hard, seed in (("random", criterion, False, 1), ("hard", criterion, True, 2),
                                       ("hard_pool2", pool2, True, 3)):
            crit.cfg["use_hard_negative"] = hard
            torch.manual_seed(seed)
            probe = LossProbe(orig, crit)
            with probe.active():
                crit(outputs, batch)
            rec = probe.records[0]
            arrays.update(loss_arrays(rec, f"loss/{mode}", f"loss/draws/{mode}"))
            arrays[f"loss/{mode}/video_angle"] = to_np(rec["video_angle"])
            arrays[f"loss/{mode}/video_aperture"] = to_np(rec["video_aperture"])
        criterion.cfg["use_hard_negative"] = False

        # metric: the original validation on the 12 val videos / 40 captions
        val = orig.validations.validations(cfg)
        ctx = val.compute_context_info(model, data.val_videos)
        scores, query_metas = val.compute_query2ctx_info(model, data.val_queries, ctx)
        recalls = val(model, data.val_videos, data.val_queries)
        arrays["metric/scores"] = to_np(scores)
        arrays["metric/recalls"] = np.array(recalls[:4], np.float64)
        arrays["metric/rsum"] = np.array(recalls[4], np.float64)

    meta = dict(
        preset="small", seed=0, original_commit=MIRROR_COMMIT, config=config_meta(cfg),
        overrides=dict(visual_feat_dim=48, **SMALL, num_workers=0, pin_memory=False),
        model_config={k: v for k, v in model.config.items()},
        n_params=sum(p.numel() for p in model.parameters()), n_state_entries=len(model.state_dict()),
        state_shapes=[[k, list(v.shape)] for k, v in model.state_dict().items()],
        score_weights=[cfg["clip_scale_w"], cfg["frame_scale_w"]],
        loss_factor=cfg["loss_factor"], neg_factor=cfg["neg_factor"], margin=cfg["margin"],
        hard_pool_size=cfg["hard_pool_size"], loss_terms=list(TERMS),
        loss_term_factor={t: (None if i is None else cfg["loss_factor"][i]) for t, i in TERM_FACTOR.items()},
        loss_seeds=dict(random=1, hard=2, hard_pool2=3),
        video_ids=video_ids, cap_ids=cap_ids, label_dict={str(k): v for k, v in label_dict.items()},
        raw_frame_counts=[len(raw["frames"][v]) for v in video_ids],
        raw_token_counts=[len(raw["tokens"][c]) for c in cap_ids],
        metric_query_ids=list(query_metas), metric_video_ids=list(ctx["video_metas"]),
        metric_caption_file_order=raw["val_caption_order"],
        metric_raw_frame_counts=[len(raw["frames"][v]) for v in ctx["video_metas"]],
    )
    write_npz(out / "hlformer-small-seed0.npz", arrays, meta)


def capture(orig: SimpleNamespace, model: torch.nn.Module) -> tuple[dict[str, Any], list]:
    """Forward hooks (first call wins; ``clip_ca`` keeps all calls) and an ``exp_map0`` recorder."""
    cap: dict[str, Any] = {"clip_ca": [], "exp_map0_in": [], "exp_map0_out": []}

    def grab(key: str, what: str = "out"):
        def hook(_m: torch.nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if key not in cap:
                cap[key] = (inp[0] if what == "in" else out).detach().clone()
        return hook

    enc = model.clip_encoder
    hooks = [(model.query_encoder, "query_tokens", "out"),
             (model.modular_vector_mapping, "query_token_logits", "out"),
             (model.modular_vector_mapping_2, "frame_pool_logits", "out"),
             (model.modular_vector_mapping_3, "clip_pool_logits", "out"),
             (enc.layer2, "clip_layer2", "out"), (model.frame_encoder_1.layer2, "frame_layer2", "out")]
    hooks += [(m, f"clip_branch{i}", "out") for i, m in enumerate([*enc.e_attns, *enc.h_attns])]
    for i in (0, 1):
        att = enc.h_attns[i].self.lorentz_multiattention
        hooks += [(att, f"clip_h{i}_in", "in"), (att, f"clip_h{i}_out", "out")]
    handles = [m.register_forward_hook(grab(k, w)) for m, k, w in hooks]
    handles.append(enc.ca.register_forward_hook(lambda _m, _i, o: cap["clip_ca"].append(o.detach().clone())))

    L = orig.lorentz
    real = L.exp_map0

    def exp_map0(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        y = real(x, *a, **k)
        cap["exp_map0_in"].append(x.detach().clone())
        cap["exp_map0_out"].append(y.detach().clone())
        return y

    class _Restore:
        def remove(self) -> None:
            L.exp_map0 = real

    L.exp_map0 = exp_map0
    handles.append(_Restore())
    return cap, handles


# -------------------------------------------------------------------------------- b) training steps, d) ckpt
def make_steps(orig: SimpleNamespace, tmp: Path, out: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [5, 20, 31, 45, 64, 90, 110, 128, 200, 77]
    train = {f"t{i}": (n, [int(x) for x in rng.integers(4, 28, int(rng.integers(1, 4)))])
             for i, n in enumerate(frames)}
    train["t8"][1][0] = 33  # the only caption over max_desc_l: batches without t8 are padded to < 30 tokens
    val = {f"u{i}": (int(n), [int(x) for x in rng.integers(4, 34, 2)])
           for i, n in enumerate(rng.integers(5, 200, 4))}
    raw = make_collection(rng, tmp, "hlsteps", 24, 20, train, val, shuffle_val=False)

    cfg = load_config(orig.src, "cha")
    cfg.update(STEPS, input_drop=0.0, drop=0.0, batchsize=5, hard_negative_start_epoch=3)
    data = load_data(orig, cfg, tmp, "hlsteps")
    order: list[dict[str, list[str]]] = []
    data.train.collate_fn = recording_collate(orig, order)
    model = build_model(orig, cfg)
    arrays = state_arrays(model, "init")
    criterion = orig.get_losses(cfg)
    val_criterion = orig.validations.validations(cfg)
    optimizer = orig.get_opts(cfg, model, data.train)
    group0 = optimizer.param_groups[0]
    n_epochs, steps_per_epoch = 5, len(data.train)
    assert steps_per_epoch == 2

    names = {p: n for n, p in model.named_parameters()}
    log: list[dict[str, Any]] = []

    def pre_step(opt: torch.optim.Optimizer, *_: Any) -> None:
        k = len(log) + 1
        steps = {s["step"] for s in opt.state.values()} or {0}
        assert len(steps) == 1
        mult = group0["schedule"].get_lr(steps.pop())
        log.append(dict(lr=group0["lr"] * mult, lr_multiplier=mult,
                        hard=bool(criterion.cfg["use_hard_negative"])))
        if k == 1:
            for p, n in names.items():
                if p.grad is not None:
                    arrays[f"grad1/{n}"] = to_np(p.grad)

    def post_step(opt: torch.optim.Optimizer, *_: Any) -> None:
        k = len(log)
        if k == 1:
            for p, n in names.items():
                if p.grad is not None:
                    arrays[f"grad1_clipped/{n}"] = to_np(p.grad)
        if k in (1, 2, 10):
            arrays.update(state_arrays(model, f"weights{k}"))

    batches: list[dict[str, Any]] = []
    model.register_forward_pre_hook(lambda _m, args: batches.append(args[0]) if model.training else None)
    loss_rng: list[torch.Tensor] = []  # the RNG state at each loss call (its triplet draws follow from it)
    criterion.register_forward_pre_hook(lambda _m, _a: loss_rng.append(torch.get_rng_state()))
    optimizer.register_step_pre_hook(pre_step)
    optimizer.register_step_post_hook(post_step)

    logger = logging.getLogger("hlformer-reference")
    probe = LossProbe(orig, criterion)
    best_val, val_log = [0.0, 0.0, 0.0, 0.0, 0.0], []
    saved = {k: cfg[k] for k in PATH_KEYS}
    cfg.update(model_root=str(tmp / "run"), ckpt_path=str(tmp / "run" / "ckpt"))
    (tmp / "run").mkdir()
    with probe.active():
        for epoch in range(n_epochs):  # main.main's loop: train an epoch, validate (no early stop this soon)
            loss_avg = orig.main.train_one_epoch(epoch, data.train, model, criterion, cfg, optimizer)
            with torch.no_grad():
                val_meter, best_val, _ = orig.main.val_one_epoch(
                    epoch, data.val_videos, data.val_queries, model, val_criterion, cfg, optimizer, best_val,
                    loss_avg, logger)
            val_log.append(dict(epoch=epoch, loss_avg=loss_avg, val=list(val_meter)))
    cfg.update(saved)
    assert len(log) == len(probe.records) == len(batches) == len(order) == n_epochs * steps_per_epoch

    for k, (rec, b, info) in enumerate(zip(probe.records, batches, log, strict=True), start=1):
        arrays.update(batch_arrays(b, f"batch/{k}"))
        arrays.update(loss_arrays(rec, f"step/{k}/loss", f"draws/{k}"))
        arrays[f"step/{k}/lr"] = np.array(info["lr"], np.float64)
        arrays[f"step/{k}/lr_multiplier"] = np.array(info["lr_multiplier"], np.float64)
        arrays[f"step/{k}/use_hard_negative"] = np.array(info["hard"])
        assert rec["hard"] == info["hard"]

    # d) the authors' checkpoint format, written by the original's own save_ckpt
    ckpt = out / "hlformer-authors-small.ckpt"
    orig.utils.save_ckpt(model, optimizer, cfg, str(ckpt), n_epochs - 1, best_val)
    # saved after the last validation, whose forward only re-applies the in-place scale_alpha clamp
    assert all(np.array_equal(to_np(v), arrays[f"weights10/{k}"]) for k, v in model.state_dict().items())

    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]  # Opts/builder.py's list, to report the groups
    meta = dict(
        preset="steps", seed=0, original_commit=MIRROR_COMMIT, config=config_meta(cfg),
        overrides=dict(visual_feat_dim=24, **STEPS, input_drop=0.0, drop=0.0, batchsize=5,
                       hard_negative_start_epoch=3, num_workers=0, pin_memory=False),
        model_config={k: v for k, v in model.config.items()},
        n_params=sum(p.numel() for p in model.parameters()),
        state_shapes=[[k, list(v.shape)] for k, v in model.state_dict().items()],
        steps=len(log), epochs_run=n_epochs, steps_per_epoch=steps_per_epoch,
        t_total=steps_per_epoch * cfg["n_epoch"], warmup=cfg["lr_warmup_proportion"],
        warmup_steps=cfg["lr_warmup_proportion"] * steps_per_epoch * cfg["n_epoch"],
        hard_negative_start_epoch=cfg["hard_negative_start_epoch"], lr=cfg["lr"], weight_decay=cfg["wd"],
        max_grad_norm=group0["max_grad_norm"], b1=group0["b1"], b2=group0["b2"], e=group0["e"],
        decayed_params=[n for n, _ in model.named_parameters() if not any(nd in n for nd in no_decay)],
        undecayed_params=[n for n, _ in model.named_parameters() if any(nd in n for nd in no_decay)],
        params_without_grad=no_grad, loss_terms=list(TERMS),
        loss_term_factor={t: (None if i is None else cfg["loss_factor"][i]) for t, i in TERM_FACTOR.items()},
        batches=[dict(step=k, epoch=(k - 1) // steps_per_epoch, **o) for k, o in enumerate(order, start=1)],
        raw_frame_counts={v: len(x) for v, x in raw["frames"].items()},
        raw_token_counts={c: len(x) for c, x in raw["tokens"].items()},
        validation=val_log, ckpt_epoch=n_epochs - 1, ckpt_model_val=best_val,
    )
    write_npz(out / "hlformer-steps-seed0.npz", arrays, meta)
    make_steps_fp64(orig, cfg, arrays, batches[0], loss_rng[0], probe.records[0], out)


def make_steps_fp64(orig: SimpleNamespace, cfg: dict[str, Any], arrays: dict[str, np.ndarray], batch: dict[str, Any],
                    rng: torch.Tensor, record: dict[str, Any], out: Path) -> None:
    """Step 1's loss and gradients again, the original model and loss in float64 (same weights, batch and draws):
    what the float32 reference values would be without rounding, to tell rounding from a difference of method."""
    model = orig.get_models(cfg)
    model.load_state_dict({k[len("init/"):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("init/")})
    model.double().train()
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    criterion = orig.get_losses(cfg)
    criterion.cfg["use_hard_negative"] = False
    outputs = model(batch)
    probe = LossProbe(orig, criterion)
    torch.set_rng_state(rng)
    with probe.active():
        loss = criterion(outputs, batch)
    loss.backward()
    rec = probe.records[0]
    for k, v in record["draws"].items():  # the same negatives as the float32 step
        assert np.array_equal(v, rec["draws"][k]), k
    fp64 = {f"loss/{t}": to_np(rec["terms"][t]) for t in TERMS}
    fp64["loss/total"] = to_np(loss)
    fp64.update({f"grad1/{n}": to_np(p.grad) for n, p in model.named_parameters() if p.grad is not None})
    write_npz(out / "hlformer-steps-fp64-seed0.npz", fp64, dict(
        preset="steps-fp64", seed=0, original_commit=MIRROR_COMMIT, step=1,
        note="step 1 of hlformer-steps-seed0.npz with model, batch and loss in float64"))


# ------------------------------------------------------------------ e) the authors' checkpoint, evaluated
def make_eval(orig: SimpleNamespace, tmp: Path, out: Path) -> None:
    """The model of ``hlformer-authors-small.ckpt`` (the steps run after 10 steps, read back from the file) scores
    a fresh val split through the original validation: 16 videos of 3-300 frames (below, at and above the 32-cell
    grid and the 128-frame limit) and 58 captions of 3-40 tokens in shuffled file order (two eval batches of 50)."""

    class _Schedule:  # the pickled LR schedule in the optimiser state, never run
        pass

    with torch.serialization.safe_globals([(_Schedule, "Opts.optimization.WarmupLinearSchedule")]):
        ckpt = torch.load(out / "hlformer-authors-small.ckpt", map_location="cpu", weights_only=True)
    cfg = dict(ckpt["config"])
    rng = np.random.default_rng(2)
    frames = [3, 20, 31, 32, 33, 47, 48, 64, 127, 128, 129, 150, 191, 192, 255, 300]
    caps = [4, 3, 5, 2, 4, 3, 4, 5, 3, 4, 2, 5, 3, 4, 4, 3]  # 58 captions
    val = {f"e{i}": (n, [int(x) for x in rng.integers(3, 41, caps[i])]) for i, n in enumerate(frames)}
    train = {"f0": (40, [8, 12]), "f1": (90, [10])}  # get_datasets needs a training split
    raw = make_collection(rng, tmp, "hleval", cfg["visual_feat_dim"], cfg["q_feat_size"], train, val,
                          shuffle_val=True)
    data = load_data(orig, cfg, tmp, "hleval")
    model = orig.get_models(cfg)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    val_criterion = orig.validations.validations(cfg)
    with torch.no_grad():
        ctx = val_criterion.compute_context_info(model, data.val_videos)
        scores, query_metas = val_criterion.compute_query2ctx_info(model, data.val_queries, ctx)
        recalls = val_criterion(model, data.val_videos, data.val_queries)
    arrays = {"scores": to_np(scores), "recalls": np.array(recalls[:4], np.float64),
              "rsum": np.array(recalls[4], np.float64)}
    arrays.update({f"frames/{v}": raw["frames"][v] for v in val})
    arrays.update({f"tokens/{c}": raw["tokens"][c] for c in raw["val_caption_order"]})
    meta = dict(preset="eval", seed=2, original_commit=MIRROR_COMMIT, checkpoint="hlformer-authors-small.ckpt",
                caption_file_order=raw["val_caption_order"], query_ids=list(query_metas),
                video_ids=list(ctx["video_metas"]), clip_scale_w=cfg["clip_scale_w"],
                frame_scale_w=cfg["frame_scale_w"], eval_query_bsz=cfg["eval_query_bsz"],
                eval_context_bsz=cfg["eval_context_bsz"])
    write_npz(out / "hlformer-eval-seed0.npz", arrays, meta)


# -------------------------------------------------------------------------------------- c) full-width shapes
def make_full(orig: SimpleNamespace, out: Path) -> dict[str, int]:
    counts = {}
    for name in ("cha", "tvr", "act"):
        cfg = load_config(orig.src, name)
        cfg["visual_feat_dim"] = FULL_VISUAL_DIM[name]
        model = build_model(orig, cfg)
        sd = model.state_dict()
        counts[name] = sum(p.numel() for p in model.parameters())
        meta = dict(preset=name, seed=0, original_commit=MIRROR_COMMIT, config=config_meta(cfg),
                    model_config={k: v for k, v in model.config.items()},
                    n_params=counts[name], n_params_issue=ISSUE_COUNTS[name],
                    n_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                    n_state_entries=len(sd), n_state_elements=sum(v.numel() for v in sd.values()),
                    state_shapes=[[k, list(v.shape)] for k, v in sd.items()])
        write_npz(out / f"hlformer-{name}-seed0.npz", {}, meta)
        del model
    return counts


def check_ckpt(path: Path) -> str:
    """Can the checkpoint be read weights-only? Returns a one-line verdict (also printed)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        plain = "weights_only=True: loads"
    except Exception as e:  # noqa: BLE001 -- report whatever the unpickler says
        reason = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), str(e).splitlines()[0])
        plain = f"weights_only=True: FAILS ({reason})"

    class _Schedule:  # stands in for the pickled LR schedule object
        pass

    with torch.serialization.safe_globals([(_Schedule, "Opts.optimization.WarmupLinearSchedule")]):
        ck = torch.load(path, map_location="cpu", weights_only=True)
    return f"{plain}; with the schedule class mapped to a stub it loads, keys {sorted(ck)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--original", type=Path, required=True, help="the original release's src/ folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", choices=["small", "steps", "eval", "full"], action="append")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    orig = load_original(args.original.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    todo = args.only or ["small", "steps", "eval", "full"]
    with tempfile.TemporaryDirectory(prefix="hlformer-ref-") as t:
        tmp = Path(t)
        if "small" in todo:
            make_small(orig, tmp, args.out)
        if "steps" in todo:
            make_steps(orig, tmp, args.out)
            print(check_ckpt(args.out / "hlformer-authors-small.ckpt"))
        if "eval" in todo:  # reads the checkpoint written by "steps"
            make_eval(orig, tmp, args.out)
    if "full" in todo:
        print("parameter counts:", make_full(orig, args.out))
    for f in sorted(args.out.glob("hlformer-*")):
        with contextlib.suppress(OSError):
            print(f"{f.name}: {f.stat().st_size} bytes, md5 {hashlib.md5(f.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
