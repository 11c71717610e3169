"""Reference tensors from the authors' Holmes code (ICML 2026, lijun2005/ICML26-Holmes) for prvr's parity tests.

Runs the ORIGINAL code on CPU, imported from a path given on the command line, and writes into --out:

    holmes[-multi]-small-seed0.npz   (a) forward pass, every loss term with its intermediates, metric
    holmes[-multi]-steps-seed0.npz   (b) 10 optimiser steps of the original train loop
    holmes-{cha,tvr,act}-seed0.npz   (c) full-width state-dict names/shapes + parameter count (meta only);
    holmes-multi-tvr-seed0.npz           for the multi-query tree only its tvr config exists
    holmes[-multi]-authors-small.ckpt (d) the (b) model after its 10 steps, saved by the original's save_ckpt
    holmes[-multi]-eval-seed0.npz    (e) that model's score matrix on a small corpus in the release layout (the
                                         raw features are stored, so a test can write the same corpus and run
                                         `prvr eval --save-scores` on the converted checkpoint)

Usage (one run per source tree; the tree is recognised by its model):

    git -C /work/.mirror/lijun2005+ICML26-Holmes/repo archive HEAD | tar -x -C /tmp/orig-holmes
    python bench/reference/holmes.py --original /tmp/orig-holmes/src --out tests/golden
    python bench/reference/holmes.py --original /tmp/orig-holmes/multisrc --out tests/golden

It needs torch, numpy, h5py, easydict, tqdm (a venv of its own; prvr is not imported).

Data goes through the original pipeline: the script writes a small synthetic corpus in the release layout
(caption files, feature.hdf5, roberta_*_query_feat.hdf5) to a temporary folder and reads it with the
original get_datasets (Dataset4PRVR: clip pooling to 32, frame sampling to <=128, L2 norm x/(|x|+1e-5),
collate_train; VisDataSet4PRVR/TxtDataSet4PRVR with collate_frame_val/collate_text_val for evaluation).
The loop of (b) is main()'s: the original main.train_one_epoch then main.val_one_epoch per epoch, with the
original get_opts (BertAdam); (d) is written by the original Utils.utils.save_ckpt. tests/golden/README-holmes.md
describes every key.

Runtime patches (the original files are never edited):
  1. torch.Tensor.cuda = identity (the original calls .cuda() in generate_gauss_weight, query_diverse_loss,
     eval_q2m and Utils.utils.gpu).
  2. Empty stand-in modules for ipdb, seaborn, matplotlib, matplotlib.pyplot (imported, never used).
  3. Config overrides: widths (visual 48, query 40, hidden 64, 4 heads for (a); visual 24, query 20,
     hidden 16, 4 heads for (b)), data_root = the synthetic corpus, num_workers 0, pin_memory False,
     batchsize (6 for (a), 5 for (b)); for (b) also input_drop = drop = 0, hard_negative_start_epoch 3 and
     warmup_epoch 4 (the configs have 20 and 20); model_root = a fixed /tmp/holmes-ref/... folder instead of
     main()'s timestamped one (val_one_epoch writes best.ckpt there; deleted afterwards). Every other value is
     the config's (cha for src/, tvr for multisrc/, the only config there).
  4. Recording only, no behaviour change: torch.randint is wrapped to record what it returns (the random
     negatives of get_clip_triplet_loss); sys.setprofile snapshots the local variables of chosen original
     functions when they return; the DataLoader's collate_fn and optimizer.step are wrapped to record the
     batches, the learning rate, the gradients (before and after BertAdam's own per-tensor clipping) and
     the weights; sys.argv is set to ["main.py"] while main.py is imported (it parses arguments at import
     time). torch.set_num_threads(1); TQDM_DISABLE=1.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import logging
import os
import sys
import tempfile
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # the original's progress bars; read when tqdm is imported

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

COMMIT = "a5ff6556828ee14c4c7a35ccdabb99ac38572296"
EXPECTED_PARAMS = {"cha": 30_791_200, "tvr": 32_273_440, "act": 30_791_200}
SMALL = dict(visual_feat_dim=48, q_feat_size=40, hidden_size=64, n_heads=4)  # (a), (d)
STEPS = dict(visual_feat_dim=24, q_feat_size=20, hidden_size=16, n_heads=4)  # (b): 6 state copies, kept small
STEPS_SCHEDULE = dict(hard_negative_start_epoch=3, warmup_epoch=4, epochs=5, batchsize=5, n_videos=10)


# ----------------------------------------------------------------------------------------------------------
# importing the original


def load_original(path: Path) -> types.SimpleNamespace:
    """Import the original modules of one source tree (src/ or multisrc/) with the runtime patches."""
    for name in ("ipdb", "seaborn", "matplotlib", "matplotlib.pyplot"):
        sys.modules.setdefault(name, types.ModuleType(name))
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    sys.path.insert(0, str(path))
    ns = types.SimpleNamespace()
    ns.configs = importlib.import_module("Configs.builder")
    ns.models = importlib.import_module("Models.builder")
    ns.model = importlib.import_module("Models.holmes.model")
    ns.components = importlib.import_module("Models.holmes.model_components")
    ns.datasets = importlib.import_module("Datasets.builder")
    ns.provider = importlib.import_module("Datasets.data_provider")
    ns.losses = importlib.import_module("Losses.builder")
    ns.loss = importlib.import_module("Losses.loss")
    ns.pot = importlib.import_module("Losses.partialot")
    ns.opts = importlib.import_module("Opts.builder")
    ns.validations = importlib.import_module("Validations.validations")
    ns.utils = importlib.import_module("Utils.utils")
    argv, sys.argv = sys.argv, ["main.py"]
    try:
        ns.main = importlib.import_module("main")
    finally:
        sys.argv = argv
    ns.multi = hasattr(ns.model.Holmes_Net, "encode_frame_query")
    return ns


def base_config(orig, name: str) -> dict:
    return copy.deepcopy(orig.configs.get_configs(name))


# ----------------------------------------------------------------------------------------------------------
# recording


def snap(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, (list, tuple)):
        return type(v)(snap(x) for x in v)
    if isinstance(v, dict):
        return {k: snap(x) for k, x in v.items()}
    return v


class Recorder:
    """Snapshots the locals of chosen functions at their return (sys.setprofile) and every torch.randint draw.

    Each snapshot also holds "__return__" and "__draws__": the randint results drawn during that call.
    """

    def __init__(self, targets: dict[str, Any]):
        # unwrap decorators (log_optimal_transport_prompt is wrapped by @torch.no_grad())
        self.codes = {inspect.unwrap(fn).__code__: name for name, fn in targets.items()}
        self.calls: dict[str, list[dict]] = defaultdict(list)
        self.draws: list[torch.Tensor] = []
        self._starts: list[int] = []

    def _profile(self, frame, event, arg):
        name = self.codes.get(frame.f_code)
        if name is None:
            return
        if event == "call":
            self._starts.append(len(self.draws))
        elif event == "return":
            snapshot = {k: snap(v) for k, v in frame.f_locals.items() if k != "self"}
            snapshot["__return__"] = snap(arg)
            snapshot["__draws__"] = list(self.draws[self._starts.pop():])
            self.calls[name].append(snapshot)

    def _randint(self, *a, **k):
        out = self._orig_randint(*a, **k)
        self.draws.append(out.clone())
        return out

    def __enter__(self) -> Recorder:
        self._orig_randint = torch.randint
        torch.randint = self._randint  # type: ignore[assignment]
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc) -> None:
        sys.setprofile(None)
        torch.randint = self._orig_randint  # type: ignore[assignment]

    def take(self, name: str, n: int | None = None) -> list[dict]:
        """The first n recorded calls of `name` (all if n is None), removed from the record."""
        calls = self.calls.get(name, [])
        n = len(calls) if n is None else n
        assert len(calls) >= n, (name, len(calls), n)
        taken, self.calls[name] = calls[:n], calls[n:]
        return taken


def loss_targets(orig) -> dict[str, Any]:
    L = orig.loss
    t = {"loss": L.loss.forward, "triplet": L.loss.get_clip_triplet_loss, "pair_division": L.loss.pair_division,
         "nce": L.clip_nce.forward, "qdl": L.query_diverse_loss.forward, "edl": L.EDL_loss.forward,
         "intra_edl": L.MaskedEDLLoss.forward, "ds_combine": L.DS_Combin_two}
    if hasattr(L, "get_dc_loss"):
        t["dc"] = L.get_dc_loss
    return t


def model_targets(orig) -> dict[str, Any]:
    M, P = orig.model.Holmes_Net, orig.pot.BatchPOT
    t = {"forward": M.forward, "encode_context": M.encode_context, "dygmm": orig.components.DyGMMBlock.forward,
         "modular": M.get_modularized_queries, "pot": P.forward, "pot_ot": P.log_optimal_transport_prompt,
         "pot_sinkhorn": P.log_sinkhorn_iterations, "pot_logits": P.calculate_video_logits}
    if orig.multi:
        t.update(frame_query=M.encode_frame_query, token_wise=M.weighted_token_wise_intersection)
    return t


def f32(x: Any) -> np.ndarray:
    """A float32 copy (never a view of a live tensor: the optimiser updates weights and clips grads in place)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=np.float32, copy=True)


def i64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=np.int64, copy=True)


# ----------------------------------------------------------------------------------------------------------
# synthetic corpus in the release layout


def write_corpus(root: Path, cfg: dict, videos: dict[str, np.ndarray], splits: dict[str, list[tuple[str, np.ndarray]]]):
    """root/<collection>/{TextData,FeatureData/<feature>} as the release has them; splits: name -> [(cap_id, tokens)]."""
    col = cfg["collection"]
    text, feat = root / col / "TextData", root / col / "FeatureData" / cfg["visual_feature"]
    text.mkdir(parents=True)
    feat.mkdir(parents=True)
    with h5py.File(feat / "feature.hdf5", "w") as f:
        for vid, frames in videos.items():
            f[vid] = frames
    (feat / "video2frames.txt").write_text("{}")
    with h5py.File(text / f"roberta_{col}_query_feat.hdf5", "w") as f:
        for caps in splits.values():
            for cap_id, tokens in caps:
                if cap_id not in f:
                    f[cap_id] = tokens
    for split, caps in splits.items():
        (text / f"{col}{split}.caption.txt").write_text("".join(f"{c} caption {c}\n" for c, _ in caps))


def make_videos(rng: np.random.RandomState, prefix: str, lengths: list[int], n_caps: list[int], dv: int, dq: int,
                tok_lens: list[int]) -> tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray]]]:
    """Raw frame features (non-negative, like I3D) and raw token features (like RoBERTa) per caption."""
    videos, caps, t = {}, [], iter(tok_lens)
    for i, (n, c) in enumerate(zip(lengths, n_caps, strict=True)):
        vid = f"{prefix}{i:02d}"
        videos[vid] = (rng.rand(n, dv) + 0.5 * rng.rand(1, dv)).astype(np.float32)
        for k in range(c):
            caps.append((f"{vid}#enc#{k}", rng.randn(next(t), dq).astype(np.float32)))
    return videos, caps


class CollateRecorder:
    """Wraps a DataLoader's collate_fn; keeps each batch and the ids in collated order."""

    def __init__(self, fn):
        self.fn, self.batches = fn, []

    def __call__(self, data):
        out = self.fn(data)  # collate_train sorts `data` in place (by frame count, descending)
        if isinstance(out, dict):
            self.batches.append(dict(batch=snap(out), video_ids=[d[5] for d in data],
                                     cap_ids=[list(d[4]) for d in data]))
        else:
            self.batches.append(dict(batch=snap(out)))
        return out


def datasets(orig, cfg: dict):
    cfg, train, ctx, qry, _, _ = orig.datasets.get_datasets(cfg)
    cfg["root"] = cfg["data_root"] = "/tmp/holmes-ref/data"  # the temporary corpus; a fixed name keeps meta stable
    for loader in (train, ctx, qry):
        loader.collate_fn = CollateRecorder(loader.collate_fn)
    return cfg, train, ctx, qry


def small_config(orig, name: str, dims: dict, root: Path, batchsize: int) -> dict:
    cfg = base_config(orig, name)
    cfg.update(dims, data_root=str(root), root=str(root), num_workers=0, pin_memory=False, no_pin_memory=True,
               batchsize=batchsize)
    cfg["model_root"] = os.path.join("/tmp/holmes-ref", "Holmes_ICML", "tvr-multi" if orig.multi else "no-multi",
                                     cfg["dataset_name"], "19700101-000000")
    cfg["ckpt_path"] = os.path.join(cfg["model_root"], "ckpt")
    return cfg


# ----------------------------------------------------------------------------------------------------------
# loss terms and draws from the recorded locals


def triplet_picks(call: dict, labels: np.ndarray, hard: bool) -> dict[str, np.ndarray]:
    """Which negative each direction used; checks that they reproduce the original's triplet value."""
    scores = call["query_context_scores"]  # (N queries, B videos)
    draws, n_vid = call["__draws__"], scores.shape[1]
    v2t_rank = [0] * n_vid if hard else [int(d.item()) for d in draws[:n_vid]]
    t2v_rank = draws[-1]  # (N,), 1-based position in the row sorted descending, positive first (999)
    assert len(draws) == (1 if hard else n_vid + 1)
    v2t_neg = []
    for i in range(n_vid):
        neg = np.where(labels != i)[0]
        _, order = torch.sort(scores.t()[i][neg], descending=True)  # the original's call on the same values
        v2t_neg.append(int(neg[order[v2t_rank[i]]]))
    out = dict(t2v_rank=i64(t2v_rank), t2v_neg_video=i64(call["sample_indices"]), v2t_neg_query=i64(v2t_neg))
    if not hard:
        out["v2t_rank"] = i64(v2t_rank)
    return out


def check_triplet(call: dict, picks: dict, labels: np.ndarray, margin: float) -> None:
    s = call["query_context_scores"].double()
    n, b = s.shape
    pos = s[torch.arange(n), torch.as_tensor(labels)]
    t2v = (margin + s[torch.arange(n), torch.as_tensor(picks["t2v_neg_video"])] - pos).clamp(min=0).sum() / n
    v2t = sum((margin + s[picks["v2t_neg_query"][i], i] - s[labels == i, i].mean()).clamp(min=0) for i in range(b)) / b
    got = float(call["__return__"])
    assert abs(float(t2v + v2t) - got) < 1e-5 * max(1.0, abs(got)), (float(t2v + v2t), got)


def loss_record(rec: Recorder, cfg: dict, labels: np.ndarray, multi: bool) -> tuple[dict, dict]:
    """Every loss term (weighted as summed into the total), the intermediates, and the draws of one loss call."""
    (L,) = rec.take("loss", 1)
    hard, warm_end = bool(cfg["use_hard_negative"]), bool(cfg["warmup_end"])
    out: dict[str, np.ndarray] = {}
    terms = dict(clip_nce="clip_nce_loss", frame_nce="frame_nce_loss", clip_trip="clip_trip_loss",
                 frame_trip="frame_trip_loss", qdl="qdl_loss", intra_video_edl="intra_video_edl_loss",
                 frame_edl="frame_eld_loss", clip_edl="clip_edl_loss", combine_edl="combine_edl_loss",
                 all_edl="all_edl_loss", loss_raw="loss_raw", total="loss")
    if multi:
        terms["dc"] = "consistent_dc_loss"
    for key, local in terms.items():
        out[key] = f32(L[local])
    total = (out["loss_raw"] + out["intra_video_edl"] + out["all_edl"] + (out["dc"] if multi else 0))
    assert abs(float(total) - float(out["total"])) < 1e-6 * max(1.0, abs(float(out["total"])))
    # unweighted values of the weighted terms, from the sub-calls (clip first, then frame)
    nce = rec.take("nce", 2)
    out["clip_nce_unweighted"], out["frame_nce_unweighted"] = f32(nce[0]["__return__"]), f32(nce[1]["__return__"])
    for name, c in zip(("clip", "frame"), nce, strict=True):
        out[f"nce/{name}/t2v"] = f32(c["losst2v"])
        out[f"nce/{name}/v2t_nominator"] = f32(c["v2t_nominator"])
        out[f"nce/{name}/v2t_denominator"] = f32(c["v2t_denominator"])
    (q,) = rec.take("qdl", 1)
    out["qdl_unweighted"] = f32(q["__return__"])
    out["qdl/cos"], out["qdl/same_video_mask"] = f32(q["cos"]), f32(q["N_one_hot"])
    # evidential terms
    out["edl/one_hot_labels"] = f32(L["one_hot_labels"])
    out["edl/labels"] = f32(L["final_labels"] if warm_end else L["one_hot_labels"])
    out["edl/frame_alpha"], out["edl/clip_alpha"] = f32(L["frame_alpha"]), f32(L["clip_alpha"])
    for k in ("all_evidence", "all_alpha", "all_b", "all_u"):
        out[f"edl/{k}"] = f32(L[k])
    (ds,) = rec.take("ds_combine", 1)
    out["edl/conflict_C"] = f32(ds["C"])
    edl = rec.take("edl", 3)
    for name, c in zip(("frame", "clip", "combine"), edl, strict=True):
        out[f"edl/{name}_loss"] = f32(c["__return__"][0])
        out[f"edl/{name}_alpha_in_loss"] = f32(c["alpha_i2v"])
    if warm_end:
        (ie,) = rec.take("intra_edl", 1)
        out["intra_video_edl_unweighted"] = f32(ie["__return__"])
        out["intra_edl/evidences"] = f32(ie["evidences"])
        out["intra_edl/per_query_loss"] = f32(ie["per_query_loss"])
        out["intra_edl/mean_loss_per_video"] = f32(ie["mean_loss_per_video"])
        for name, c in zip(("frame", "clip"), rec.take("pair_division", 2), strict=True):
            p = f"pair_division/{name}/"
            out[p + "S_C"], out[p + "S_n"], out[p + "S_U"] = (i64(x) for x in c["__return__"])
            out[p + "S_m"] = i64(c["S_m"])
            out[p + "predicted_labels"] = i64(c["predicted_labels"])
            out[p + "consensus"] = f32(c["consens_all_queries"])
            out[p + "max_uncertainty"], out[p + "min_consensus"] = f32(c["max_uncertainty"]), f32(c["min_consens"])
            out[p + "uncertainty"] = f32(c["all_uncertainty"])
            out[p + "expected_entropy"] = f32(c["expected_entropy"])
            out[p + "median_entropy"] = f32(c["median_entropy"])
        out["edl/ambiguous_queries"] = i64(L["ambiguous_queries_set"])
    if multi:
        (dc,) = rec.take("dc", 1)
        out["dc_unweighted"] = f32(dc["__return__"])
        out["dc/p"], out["dc/u"] = f32(dc["p"]), f32(dc["u"])
    # triplets: frame first, then clip; their random negatives
    draws = {}
    for name, c in zip(("frame", "clip"), rec.take("triplet", 2), strict=True):
        picks = triplet_picks(c, labels, hard)
        check_triplet(c, picks, labels, cfg["margin"])
        out[f"triplet/{name}/t2v_loss"] = f32(c["t2v_loss"])  # (N,) hinge per query
        out[f"triplet/{name}/v2t_loss"] = f32(c["v2t_loss"])  # summed over videos
        draws.update({f"{name}_{k}": v for k, v in picks.items()})
    return out, draws


# ----------------------------------------------------------------------------------------------------------
# (a) forward, losses, metric


def batch_inputs(b: dict) -> dict[str, np.ndarray]:
    return {"clip_feat": f32(b["clip_video_features"]), "frame_feat": f32(b["frame_video_features"]),
            "frame_mask": f32(b["videos_mask"]), "query_feat": f32(b["text_feat"]), "query_mask": f32(b["text_mask"]),
            "labels": i64(b["text_labels"])}


def forward_outputs(rec: Recorder, cfg: dict, multi: bool, batch: dict) -> dict[str, np.ndarray]:
    (F,) = rec.take("forward")
    (ctx,) = rec.take("encode_context")
    clip_blk, frame_blk = rec.take("dygmm")
    out = {"encoded_clip": f32(F["vid_proposal_feat"]), "encoded_frame": f32(F["encoded_frame_feat"]),
           "query_embedding": f32(F["video_query"]),
           "clip_scale_scores": f32(F["clip_scale_scores"]), "clip_scale_scores_unnorm": f32(F["clip_scale_scores_"]),
           "frame_scale_scores": f32(F["frame_scale_scores"]),
           "frame_scale_scores_unnorm": f32(F["frame_scale_scores_"])}
    out["score"] = f32(cfg["clip_scale_w"] * F["clip_scale_scores"] + cfg["frame_scale_w"] * F["frame_scale_scores"])
    assert ctx["frame_video_feat"].shape[1] == 128
    for name, blk in (("clip", clip_blk), ("frame", frame_blk)):
        out[f"{name}_weight_token"] = f32(blk["weight_token"])  # (B, 1, D) mean over positions and branches
        out[f"{name}_branch_weights"] = f32(blk["weight"])  # (B, L, 8) softmax over branches
    out["clip_branch_outputs"] = f32(clip_blk["oo"])  # (B, 32, D, 8)
    modular = rec.take("modular")  # encode_query is called twice (scores, then POT/qdl): same in eval
    out["query_token_attention"] = f32(modular[0]["modular_attention_scores"][..., 0])
    assert torch.equal(modular[0]["__return__"], modular[1]["__return__"])
    (pot,) = rec.take("pot")
    (ot,) = rec.take("pot_ot")
    (sk,) = rec.take("pot_sinkhorn")
    (lg,) = rec.take("pot_logits")
    out["pot/clip_embs"] = f32(F["batched_clip_embs"])
    out["pot/text_embs"] = f32(F["batched_text_embs"])
    out["pot/text_mask"] = f32(F["batched_text_mask"])
    out["pot/min"], out["pot/max"] = f32(pot["min_vals"][:, 0, 0]), f32(pot["max_vals"][:, 0, 0])
    out["pot/sim"] = f32(F["batched_intravideo_sim"])
    out["pot/prompt"] = f32(pot["prompt_token_clip"])
    out["pot/couplings"] = f32(ot["couplings"])
    out["pot/log_mu"], out["pot/log_nu"] = f32(ot["log_mu"]), f32(ot["log_nu"])
    out["pot/sinkhorn_u"], out["pot/sinkhorn_v"] = f32(sk["u"]), f32(sk["v"])
    out["pot/log_plan"] = f32(ot["__return__"])
    out["pot/plan"] = f32(F["batch_pot_results"])
    out["pot/mass"] = f32(F["pot_mass"])
    assert torch.equal(lg["align_logit_exp"], F["batch_pot_results"])
    if multi:
        (fq,) = rec.take("frame_query")
        norm_call, raw_call = rec.take("token_wise")
        out["frame_query_tokens"] = f32(fq["encoded_query"])
        out["token_weights"] = f32(norm_call["text_weight"])
        out["token_weights_unnorm"] = f32(raw_call["text_weight"])
        out["token_best_frame"] = i64(norm_call["max_idx1"])
        # per token, the best frame's cosine (the max the original takes); checked against its weighted sum
        q = torch.nn.functional.normalize(fq["encoded_query"], dim=-1)
        v = torch.nn.functional.normalize(F["encoded_frame_feat"], dim=-1)
        logits = torch.einsum("atd,bvd->abtv", q, v) * batch["text_mask"][:, None, :, None]
        logits = logits * batch["videos_mask"][None, :, None, :]
        tmax = logits.max(-1).values
        out["token_frame_max"] = f32(tmax)
        recon = torch.einsum("abt,at->ab", tmax, norm_call["text_weight"])
        assert torch.allclose(recon, F["frame_scale_scores"], atol=1e-6)
    assert not any(rec.calls.values()), {k: len(v) for k, v in rec.calls.items() if v}
    return out


def floor_case(orig, model, batch: dict, arrays: dict) -> dict[str, np.ndarray]:
    """The original frame-scale scoring on probe queries q_b = -mean of video b's real normalised frame tokens:
    all real frames of the shorter videos then score < 0, so the zeroed padded frames (cosine / dot 0, inside
    the max) set their score to exactly 0."""
    frames, mask = torch.from_numpy(arrays["output/encoded_frame"]), batch["videos_mask"]  # (B, 128, D), (B, 128)
    unit = torch.nn.functional.normalize(frames, dim=-1) * mask[..., None]
    probe = -unit.sum(1) / mask.sum(1, keepdim=True)  # (B, D)
    out = {"output/floor_case/probe": f32(probe)}
    if orig.multi:  # two tokens per probe, the second padded: (B, 2, D), mask (B, 2)
        tokens, tmask = torch.stack([probe, 0.5 * probe], 1), torch.tensor([[1.0, 0.0]]).repeat(len(probe), 1)
        norm = model.get_frame_scale_scores(tokens, frames, tmask, mask)
        raw = model.get_unnormalized_frame_scale_scores(tokens, frames, tmask, mask)
        out.update({"output/floor_case/probe_tokens": f32(tokens), "output/floor_case/probe_mask": f32(tmask)})
    else:
        M = orig.model.Holmes_Net
        norm, raw = M.get_clip_scale_scores(probe, frames), M.get_unnormalized_clip_scale_scores(probe, frames)
    assert (norm == 0).any() and (raw == 0).any()
    out.update({"output/floor_case/frame_scale_scores": f32(norm), "output/floor_case/frame_scale_scores_unnorm": f32(raw)})
    return out


def make_forward(orig, name: str, work: Path) -> tuple[dict, dict]:
    rng = np.random.RandomState(0)
    dv, dq = SMALL["visual_feat_dim"], SMALL["q_feat_size"]
    # (a): 6 videos, 1-3 captions; one shorter than the 32-cell clip grid, one of exactly 128 frames, one longer
    train_v, train_c = make_videos(rng, "v", [7, 300, 128, 45, 20, 90], [2, 1, 3, 1, 2, 3], dv, dq,
                                   [12, 35, 3, 20, 8, 30, 17, 5, 26, 9, 14, 22])
    # metric: 10 more videos, 2-3 captions each
    n_caps = [2, 3, 2, 3, 2, 3, 2, 3, 2, 2]
    val_v, val_c = make_videos(rng, "m", [int(x) for x in rng.randint(5, 160, size=10)], n_caps, dv, dq,
                               [int(x) for x in rng.randint(4, 33, size=sum(n_caps))])
    root = work / f"corpus-{name}"
    cfg = small_config(orig, name, SMALL, root, batchsize=6)
    write_corpus(root, cfg, {**train_v, **val_v}, {"train": train_c, "val": val_c, "test": val_c})

    orig.utils.set_seed(cfg["seed"])  # main(): set_seed, get_datasets, get_models
    cfg, train_loader, ctx_loader, qry_loader = datasets(orig, cfg)
    model = orig.models.get_models(cfg)
    criterion = orig.losses.get_losses(cfg)
    arrays: dict[str, np.ndarray] = {f"state/{k}": f32(v) for k, v in model.state_dict().items()}

    batch = next(iter(train_loader))
    rec_b = train_loader.collate_fn.batches[-1]
    labels = np.asarray(batch["text_labels"])
    arrays.update({f"input/{k}": v for k, v in batch_inputs(batch).items()})
    for i, vid in enumerate(rec_b["video_ids"]):
        arrays[f"raw_frames/{i}"] = train_v[vid]

    model.eval()
    with torch.no_grad(), Recorder(model_targets(orig)) as rec:
        input_list = model(batch)
        arrays.update({f"output/{k}": v for k, v in forward_outputs(rec, cfg, orig.multi, batch).items()})
    with torch.no_grad():
        arrays.update(floor_case(orig, model, batch, arrays))
    with torch.no_grad(), Recorder(loss_targets(orig)) as rec:
        loss_meta = {}
        for mode, hard in (("random", False), ("hard", True)):
            criterion.cfg["use_hard_negative"] = criterion.cfg["warmup_end"] = hard
            criterion(input_list, batch)
            terms, draws = loss_record(rec, criterion.cfg, labels, orig.multi)
            arrays.update({f"loss/{mode}/{k}": v for k, v in terms.items()})
            arrays.update({f"loss/draws/{mode}/{k}": v for k, v in draws.items()})
            loss_meta[mode] = dict(use_hard_negative=hard, warmup_end=hard)
        criterion.cfg["use_hard_negative"] = criterion.cfg["warmup_end"] = False

    # metric: the original validation on the val split (eval batch sizes of the config: one batch each)
    val = orig.validations.validations(cfg)
    with torch.no_grad():
        recalls = val(model, ctx_loader, qry_loader)
        info = val.compute_context_info(model, ctx_loader)
        scores, query_metas = val.compute_query2ctx_info(model, qry_loader, info)
    vb, qb = ctx_loader.collate_fn.batches[-1]["batch"], qry_loader.collate_fn.batches[-1]["batch"]
    arrays.update({"metric/scores": f32(scores), "metric/recalls": np.asarray(recalls[:4], np.float64),
                   "metric/clip_feat": f32(vb[0]), "metric/frame_feat": f32(vb[1]), "metric/frame_mask": f32(vb[2]),
                   "metric/query_feat": f32(qb[0]), "metric/query_mask": f32(qb[1])})
    meta = dict(
        source="lijun2005/ICML26-Holmes", commit=COMMIT, tree="multisrc" if orig.multi else "src", config_name=name,
        config=cfg, n_params=sum(p.numel() for p in model.parameters()), torch=torch.__version__,
        video_ids=rec_b["video_ids"], query_ids=[c for caps in rec_b["cap_ids"] for c in caps],
        raw_lengths=[int(train_v[v].shape[0]) for v in rec_b["video_ids"]],
        score_weights=[cfg["clip_scale_w"], cfg["frame_scale_w"]], loss_modes=loss_meta,
        metric_query_ids=list(query_metas), metric_video_ids=list(info["video_metas"]),
        metric_recalls=[float(r) for r in recalls[:5]], eval_mode=True)
    return arrays, dict(meta=meta)


# ----------------------------------------------------------------------------------------------------------
# (b) training steps


class StepRecorder:
    """Wraps optimizer.step: learning rate per step, gradients of step 1 (before/after clipping), weights."""

    def __init__(self, model, optimizer, n_steps: int):
        self.model, self.opt, self.n = model, optimizer, n_steps
        self.step_fn, self.k = optimizer.step, 0
        self.lr: list[float] = []
        self.saved: dict[str, dict[str, np.ndarray]] = {}
        optimizer.step = self

    def _lr(self) -> float:
        group = self.opt.param_groups[0]
        p = next(p for p in group["params"] if p.grad is not None)
        state = self.opt.state[p]
        return group["lr"] * group["schedule"].get_lr(state["step"] if state else 0)

    def __call__(self, closure=None):
        self.k += 1
        named = list(self.model.named_parameters())
        self.lr.append(self._lr())
        if self.k == 1:
            self.saved["grad1"] = {n: f32(p.grad) for n, p in named if p.grad is not None}
        out = self.step_fn(closure)
        if self.k == 1:
            self.saved["grad1_clipped"] = {n: f32(p.grad) for n, p in named if p.grad is not None}
        if self.k in (1, 2, self.n):
            self.saved[f"weights{self.k}"] = {n: f32(v) for n, v in self.model.state_dict().items()}
        return out


def make_steps(orig, name: str, work: Path) -> tuple[dict, dict]:
    rng = np.random.RandomState(1)
    S = STEPS_SCHEDULE
    dv, dq = STEPS["visual_feat_dim"], STEPS["q_feat_size"]
    n_caps = [2, 1, 3, 2, 1, 3, 2, 2, 1, 3]
    lengths = [12, 25, 40, 64, 100, 150, 30, 8, 77, 128]
    vids, caps = make_videos(rng, "s", lengths, n_caps, dv, dq,
                             [int(x) for x in rng.randint(3, 36, size=sum(n_caps))])
    root = work / f"steps-{name}"
    cfg = small_config(orig, name, STEPS, root, batchsize=S["batchsize"])
    cfg.update(input_drop=0.0, drop=0.0, hard_negative_start_epoch=S["hard_negative_start_epoch"],
               warmup_epoch=S["warmup_epoch"])
    write_corpus(root, cfg, vids, {"train": caps, "val": caps[:4], "test": caps[:4]})

    orig.utils.set_seed(cfg["seed"])  # main(): set_seed, get_datasets, get_models, get_losses, get_validations, get_opts
    cfg, train_loader, ctx_loader, qry_loader = datasets(orig, cfg)
    model = orig.models.get_models(cfg)
    arrays: dict[str, np.ndarray] = {f"init/{k}": f32(v) for k, v in model.state_dict().items()}
    criterion = orig.losses.get_losses(cfg)
    val_criterion = orig.validations.validations(cfg)
    optimizer = orig.opts.get_opts(cfg, model, train_loader)
    n_steps = S["epochs"] * len(train_loader)
    steps = StepRecorder(model, optimizer, n_steps)
    # main()'s epoch loop: train_one_epoch, then val_one_epoch under no_grad (it saves best.ckpt into
    # cfg["model_root"] when SumR improves; its data loaders draw a base seed from the global RNG, as in main)
    os.makedirs(cfg["model_root"], exist_ok=True)
    logger = logging.getLogger("holmes-reference")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    best_val, val_log = [0.0, 0.0, 0.0, 0.0, 0.0], []
    with Recorder(loss_targets(orig)) as rec:
        for epoch in range(S["epochs"]):
            loss_meter = orig.main.train_one_epoch(epoch, train_loader, model, criterion, cfg, optimizer)
            with torch.no_grad():
                val_meter, best_val, _ = orig.main.val_one_epoch(epoch, ctx_loader, qry_loader, model, val_criterion,
                                                                  cfg, optimizer, best_val, loss_meter, logger)
            val_log.append([float(x) for x in val_meter[:5]])
    best = Path(cfg["model_root"]) / "best.ckpt"
    if best.exists():
        best.unlink()
    os.removedirs(cfg["model_root"])  # the empty folders made above
    batches = train_loader.collate_fn.batches
    assert len(batches) == n_steps == steps.k == 10
    step_meta = []
    for k, b in enumerate(batches, start=1):
        batch = b["batch"]
        epoch = (k - 1) // len(train_loader)
        flags = dict(use_hard_negative=epoch >= cfg["hard_negative_start_epoch"], warmup_end=epoch >= cfg["warmup_epoch"])
        terms, draws = loss_record(rec, flags | {"loss_factor": cfg["loss_factor"], "margin": cfg["margin"]},
                                   np.asarray(batch["text_labels"]), orig.multi)
        arrays.update({f"batch/{k}/{n}": v for n, v in batch_inputs(batch).items()})
        arrays.update({f"draws/{k}/{n}": v for n, v in draws.items()})
        arrays.update({f"step/{k}/loss/{n}": terms[n] for n in LOSS_TERMS + (("dc",) if orig.multi else ())})
        arrays[f"step/{k}/lr"] = np.asarray(steps.lr[k - 1], np.float64)
        step_meta.append(dict(step=k, epoch=epoch, **flags, lr=steps.lr[k - 1], video_ids=b["video_ids"],
                              query_ids=[c for cs in b["cap_ids"] for c in cs]))
    for group in ("grad1", "grad1_clipped", "weights1", "weights2", f"weights{n_steps}"):
        arrays.update({f"{group}/{n}": v for n, v in steps.saved[group].items()})
    sched = optimizer.param_groups[0]["schedule"]
    no_decay = [n for n, p in model.named_parameters() if any(nd in n for nd in ["bias", "LayerNorm.bias", "LayerNorm.weight"])]
    meta = dict(
        source="lijun2005/ICML26-Holmes", commit=COMMIT, tree="multisrc" if orig.multi else "src", config_name=name,
        config=cfg, n_params=sum(p.numel() for p in model.parameters()), torch=torch.__version__,
        steps_per_epoch=len(train_loader), epochs_run=S["epochs"], n_steps=n_steps,
        t_total=sched.t_total, warmup=sched.warmup, warmup_steps=sched.warmup * sched.t_total,
        hard_negative_start_epoch=cfg["hard_negative_start_epoch"], warmup_epoch=cfg["warmup_epoch"],
        optimizer=dict(type="BertAdam", lr=cfg["lr"], b1=0.9, b2=0.999, e=1e-6, max_grad_norm=1.0,
                       schedule="warmup_linear", weight_decay_groups=[0.01, 0.0], no_decay_params=no_decay),
        params_without_grad=[n for n, p in model.named_parameters() if n not in steps.saved["grad1"]],
        steps=step_meta, raw_lengths=dict(zip(vids, lengths, strict=True)), val_per_epoch=val_log,
        best_val=[float(x) for x in best_val[:5]])
    return arrays, dict(meta=meta, model=model, optimizer=optimizer, cfg=cfg, epoch=S["epochs"] - 1, best_val=best_val)


LOSS_TERMS = ("clip_nce", "frame_nce", "clip_trip", "frame_trip", "qdl", "intra_video_edl", "frame_edl", "clip_edl",
              "combine_edl", "all_edl", "loss_raw", "total")


# ----------------------------------------------------------------------------------------------------------
# (e) the (b) model evaluated on a corpus in the release layout


EVAL_CORPUS = dict(lengths=[7, 20, 31, 32, 64, 100, 128, 129, 200, 300, 45, 90],
                   n_caps=[2, 1, 3, 2, 2, 1, 3, 2, 1, 2, 2, 3], eval_context_bsz=5, eval_query_bsz=7)


def make_eval(orig, name: str, work: Path, model, run_cfg: dict) -> tuple[dict, dict]:
    """The original validation (`validations.compute_context_info` + `compute_query2ctx_info`, as `main.py --eval`
    runs it on the test split) of the trained (b) model on 12 more videos: raw features, score matrix, recalls.
    Batches of 5 videos and 7 captions, so the rows follow the original's per-batch sort by token count."""
    rng = np.random.RandomState(2)
    E = EVAL_CORPUS
    dv, dq = STEPS["visual_feat_dim"], STEPS["q_feat_size"]
    vids, caps = make_videos(rng, "e", E["lengths"], E["n_caps"], dv, dq,
                             [int(x) for x in rng.randint(3, 36, size=sum(E["n_caps"]))])
    rng.shuffle(caps)  # caption file order is not video order: columns follow first appearance
    root = work / f"eval-{name}"
    cfg = copy.deepcopy(run_cfg)
    cfg.update(data_root=str(root), root=str(root), eval_context_bsz=E["eval_context_bsz"],
               eval_query_bsz=E["eval_query_bsz"])
    write_corpus(root, cfg, vids, {"train": caps, "val": caps, "test": caps})
    cfg, _, _, _, test_ctx, test_qry = orig.datasets.get_datasets(cfg)
    model.eval()
    val = orig.validations.validations(cfg)
    with torch.no_grad():
        recalls = val(model, test_ctx, test_qry)
        info = val.compute_context_info(model, test_ctx)
        scores, query_metas = val.compute_query2ctx_info(model, test_qry, info)
    arrays = {f"raw_frames/{v}": f for v, f in vids.items()}
    arrays.update({f"tokens/{c}": t for c, t in caps})
    arrays.update({"scores": f32(scores), "recalls": np.asarray(recalls[:4], np.float64)})
    meta = dict(source="lijun2005/ICML26-Holmes", commit=COMMIT, tree="multisrc" if orig.multi else "src",
                config_name=name, collection=cfg["collection"], visual_feature=cfg["visual_feature"],
                caption_ids=[c for c, _ in caps], row_query_ids=list(query_metas),
                column_video_ids=list(info["video_metas"]), recalls=[float(r) for r in recalls[:5]],
                eval_context_bsz=E["eval_context_bsz"], eval_query_bsz=E["eval_query_bsz"],
                checkpoint=f"{'holmes-multi' if orig.multi else 'holmes'}-authors-small.ckpt")
    return arrays, meta


# ----------------------------------------------------------------------------------------------------------
# (c) full-width shapes, (d) the authors' checkpoint format


def full_width(orig, name: str) -> dict:
    cfg = base_config(orig, name)
    torch.manual_seed(0)
    model = orig.models.get_models(cfg)
    n = sum(p.numel() for p in model.parameters())
    return dict(source="lijun2005/ICML26-Holmes", commit=COMMIT, tree="multisrc" if orig.multi else "src",
                config_name=name, config=cfg, n_params=n,
                state_shapes=[[k, list(v.shape)] for k, v in model.state_dict().items()])


def check_weights_only(ckpt: Path) -> None:
    """Report whether torch.load(weights_only=True) reads the file, plainly and with an inert stand-in class."""
    try:
        torch.load(ckpt, map_location="cpu", weights_only=True)
        print(f"{ckpt.name}: torch.load(weights_only=True) succeeds")
        return
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        why = [line for line in str(e).splitlines() if "Unsupported global" in line] or [str(e)[:200]]
        print(f"{ckpt.name}: torch.load(weights_only=True) FAILS: {why[0].strip()[:160]}")
    stand_in = type("WarmupLinearSchedule", (), {"__module__": "Opts.optimization"})
    with torch.serialization.safe_globals([stand_in]):
        ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    print(f"{ckpt.name}: weights-only load with an inert Opts.optimization.WarmupLinearSchedule allowlisted "
          f"succeeds; keys {list(ck)}")


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    arrays = dict(arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    np.savez_compressed(path, **arrays)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--original", type=Path, required=True, help="the original's src/ or multisrc/ folder")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    orig = load_original(args.original.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = "holmes-multi" if orig.multi else "holmes"
    name = "tvr" if orig.multi else "cha"
    with tempfile.TemporaryDirectory() as tmp:
        arrays, extra = make_forward(orig, name, Path(tmp))
        write_npz(args.out / f"{prefix}-small-seed0.npz", arrays, extra["meta"])
        print(f"{prefix}-small-seed0.npz: {len(arrays)} arrays, n_params {extra['meta']['n_params']}")
        arrays, extra = make_steps(orig, name, Path(tmp))
        write_npz(args.out / f"{prefix}-steps-seed0.npz", arrays, extra["meta"])
        lrs = [f"{s['lr']:.3g}" for s in extra["meta"]["steps"]]
        print(f"{prefix}-steps-seed0.npz: {len(arrays)} arrays, lr per step {lrs}")
        # (d) the steps model after its 10 steps, saved by the original's save_ckpt as main() saves best.ckpt
        ckpt = args.out / f"{prefix}-authors-small.ckpt"
        orig.utils.save_ckpt(extra["model"], extra["optimizer"], extra["cfg"], str(ckpt), extra["epoch"],
                             extra["best_val"])
        check_weights_only(ckpt)
        # (e) the same model on a corpus in the release layout
        arrays, meta = make_eval(orig, name, Path(tmp), extra["model"], extra["cfg"])
        write_npz(args.out / f"{prefix}-eval-seed0.npz", arrays, meta)
        print(f"{prefix}-eval-seed0.npz: scores {arrays['scores'].shape}, recalls {meta['recalls']}")
    for cfg_name in (["tvr"] if orig.multi else ["cha", "tvr", "act"]):
        meta = full_width(orig, cfg_name)
        write_npz(args.out / f"{prefix}-{cfg_name}-seed0.npz", {}, meta)
        expected = EXPECTED_PARAMS.get(cfg_name) if not orig.multi else None
        print(f"{prefix}-{cfg_name}-seed0.npz: n_params {meta['n_params']:,} (issue: {expected})")


if __name__ == "__main__":
    main()
