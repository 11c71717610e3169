"""Reference tensors from the authors' DreamPRVR code: every loss term and 10 training steps, run on CPU.

    python bench/reference/dreamprvr.py --original /tmp/orig-dreamprvr/src --out tests/golden \\
        [--small tests/golden/small-seed0.npz]

`--original` is the `src/` folder of lijun2005/CVPR26-DreamPRVR (commit 8337f448033cc599b9f1b5d51b977cc4543d3375),
imported at run time and never copied. Runtime patches (see `_common_dreamprvr.py` for the details):
`torch.Tensor.cuda` is the identity; `ipdb`, `seaborn`, `matplotlib(.pyplot)` are empty stand-in modules;
`sys.argv` is `["main.py"]` while `main` is imported; `tqdm` in `main` and `Validations.validations` is
given `disable=True`; `Configs/cha.py` is not imported (it creates /data2/... folders at import) but its
`cfg[...] = ...` statements are evaluated from its syntax tree.
Recording wrappers (return values unchanged) on `torch.distributions.Normal.sample`, `torch.randint`,
`Opts.optimization.clip_grad_norm_`, and on a few bound methods/modules of the model and the loss.

Steps:
0. Harness proof: the original model built from `meta.config` of small-seed0.npz with its `state/*` reproduces
   `output/*` on `input/*` (max errors printed; the run stops above 1e-5).
1. `dreamprvr-losses-seed0.npz`: the training forward pass (`model.train()`, every dropout 0) of that model on
   its inputs with labels LOSS_LABELS, and every term of `Losses.loss.loss` with random and with hard negatives.
2. `dreamprvr-steps-seed0.npz`: 10 optimiser steps of `main.train_one_epoch` (and `main.val_one_epoch` after each
   epoch) on a narrower model with dropout 0, the original data provider, DataLoader, BertAdam and schedule.
3. `dreamprvr-authors-small.ckpt`: `Utils.utils.save_ckpt` (what main.py calls) after the 10 steps.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from easydict import EasyDict as EDict
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common_dreamprvr import (
    Recorder,
    load_npz,
    load_original,
    model_cfg_from_run,
    record_calls,
    save_npz,
    to_np,
)

ORIGINAL_COMMIT = "8337f448033cc599b9f1b5d51b977cc4543d3375"
TERMS = ("clip_nce", "clip_triplet", "frame_nce", "frame_triplet", "query_diversity",
         "query_similarity_preservation", "kl", "diffusion")
LOSS_LABELS = [0, 0, 1, 2, 2, 2, 3, 4, 5]  # 9 queries of small-seed0 over its 6 videos, contiguous as collate_train
HARD_POOL_SIZE = 3  # instead of Charades' 20, so that the hard pool (top-3 negatives) is smaller than the batch
# the narrower model of the step file (the small-seed0 width would make each weight copy 4 MB)
STEP_MODEL = dict(visual_feat_dim=16, q_feat_size=16, hidden_size=16, n_heads=4, num_registers=4, timesteps=5,
                  input_drop=0.0, drop=0.0)
STEP_RUN = dict(batchsize=5, n_epoch=10, lr_warmup_proportion=0.12, hard_negative_start_epoch=2,
                hard_pool_size=HARD_POOL_SIZE, eval_context_bsz=100, eval_query_bsz=50, num_workers=0,
                pin_memory=False)
N_VIDEOS, N_STEPS = 13, 10  # 13 videos in batches of 5 -> 3 steps per epoch (5, 5, 3 videos)


# ----------------------------------------------------------------------------------------------- config
def charades_cfg(src: Path) -> dict:
    """The flat `cfg` of Configs/cha.py: its `cfg[...] = ...` statements evaluated in file order."""
    tree = ast.parse((src / "Configs" / "cha.py").read_text())
    body = [n for n in tree.body if isinstance(n, ast.Assign) and (
        (isinstance(n.targets[0], ast.Name) and n.targets[0].id == "cfg")
        or (isinstance(n.targets[0], ast.Subscript) and getattr(n.targets[0].value, "id", "") == "cfg"))]
    ns: dict = {"os": __import__("os")}
    exec(compile(ast.Module(body=body, type_ignores=[]), "Configs/cha.py", "exec"), ns)
    return ns["cfg"]


# ----------------------------------------------------------------------------------------------- harness
def prove_harness(m: dict, small: dict[str, np.ndarray], meta: dict) -> torch.nn.Module:
    net = m["model"].DreamPRVR_Net(EDict(meta["config"]))
    net.load_state_dict({k[len("state/"):]: torch.from_numpy(v) for k, v in small.items() if k.startswith("state/")})
    net.eval()
    t = {k: torch.from_numpy(v) for k, v in small.items() if k.startswith("input/")}
    with torch.no_grad():
        frame, clip = net.encode_context(t["input/clip_feat"], t["input/frame_feat"], t["input/frame_mask"], train=False)
        query = net.encode_query(t["input/query_feat"], t["input/query_mask"])
        cs, fs = net.get_pred_from_raw_query(t["input/query_feat"], t["input/query_mask"], None, clip, frame)
    w = meta["score_weights"]
    got = dict(encoded_clip=clip, encoded_frame=frame, query_embedding=query, clip_scale_scores=cs,
               frame_scale_scores=fs, score=w[0] * cs + w[1] * fs)
    worst = 0.0
    for name, value in got.items():
        err = float((value - torch.from_numpy(small[f"output/{name}"])).abs().max())
        worst = max(worst, err)
        print(f"harness: output/{name:20s} max |original - golden| = {err:.3g}")
    if worst > 1e-5:
        raise SystemExit(f"harness check failed: max error {worst:.3g} > 1e-5")
    return net


# ----------------------------------------------------------------------------------------------- loss terms
def resolve_triplet(scores: torch.Tensor, labels: list[int], hard: bool, pool: int,
                    draws: list[tuple[tuple, torch.Tensor]]) -> dict[str, np.ndarray]:
    """The negatives `get_single_timestep_clip_triplet_loss` picked, from its `torch.randint` results.

    Same sorts as the original: v2t sorts the scores of the other videos' queries descending and takes
    draw (random) or 0 (hard); t2v sorts each row with the positive set to 999 and takes column k.
    """
    lab = np.array(labels)
    n_q, n_v = scores.shape
    draws = list(draws)
    v2t_draw, v2t_neg = [], []
    for i in range(n_v):
        neg = np.where(lab != i)[0]
        _, order = torch.sort(scores.t()[i][neg], descending=True)
        if hard:
            d = 0
        else:
            args, out = draws.pop(0)
            assert args[:2] == (0, len(neg)), args
            d = int(out[0])
        v2t_draw.append(d)
        v2t_neg.append(int(neg[int(order[d])]))
    args, k = draws.pop(0)
    assert args[:2] == (1, min(1 + pool, n_v) if hard else n_v) and not draws, (args, draws)
    masked = scores.detach().clone()
    masked[torch.arange(n_q), lab] = 999
    _, order = torch.sort(masked, descending=True, dim=1)
    t2v_neg = order[torch.arange(n_q), k]
    out = dict(t2v_draw=to_np(k), t2v_neg=to_np(t2v_neg), v2t_neg=to_np(v2t_neg))
    if not hard:
        out["v2t_draw"] = to_np(v2t_draw)
    return out


class LossProbe:
    """Records every term of one `Losses.loss.loss` call (unweighted) and the triplet draws, by scale."""

    def __init__(self, criterion: torch.nn.Module, rec: Recorder):
        self.criterion, self.rec = criterion, rec
        self.values: dict[str, torch.Tensor] = {}
        self.nce: list[torch.Tensor] = []
        for name, mod in (("clip_nce", criterion.clip_nce_criterion), ("frame_nce", criterion.video_nce_criterion),
                          ("query_diversity", criterion.qdl), ("query_similarity_preservation", criterion.qsp)):
            mod.register_forward_hook(lambda _m, _i, out, name=name: self.values.__setitem__(name, out.detach()))
        kld = criterion.kld_loss
        trip = criterion.get_clip_triplet_loss

        def kld_rec(mu, logvar):
            out = kld(mu, logvar)
            self.values["kl"] = out.detach()
            return out

        def trip_rec(scores, labels):
            scale = "clip" if "clip_triplet" not in self.values else "frame"
            rec.tag = f"{scale}_triplet"
            out = trip(scores, labels)
            rec.tag = ""
            self.values[f"{scale}_triplet"] = out.detach()
            return out

        criterion.kld_loss, criterion.get_clip_triplet_loss = kld_rec, trip_rec

    def run(self, input_list: list, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        self.values = {}
        total, dre = self.criterion(input_list, batch)
        return total, dre

    def terms(self, input_list: list) -> dict[str, torch.Tensor]:
        out = dict(self.values)
        out["diffusion"] = F.mse_loss(input_list[12], input_list[13]).detach()  # the original's loss_dre / lf[5]
        return out


def weighted_total(terms: dict[str, torch.Tensor], lf: list[float]) -> torch.Tensor:
    """The original's sum, in its order: sim + tssl + pvs + dre."""
    sim = lf[0] * terms["clip_nce"] + terms["clip_triplet"] + lf[1] * terms["frame_nce"] + terms["frame_triplet"]
    tssl = lf[2] * terms["query_diversity"] + lf[3] * terms["query_similarity_preservation"]
    return sim + tssl + terms["kl"] * lf[4] + terms["diffusion"] * lf[5]


def triplet_draws(rec: Recorder, scale: str) -> list[tuple[tuple, torch.Tensor]]:
    return [(args, out) for tag, args, out in rec.randint if tag == f"{scale}_triplet"]


class ForwardProbe:
    """Records the training forward pass's intermediate tensors (both query passes, targets, registers, ...)."""

    def __init__(self, net: torch.nn.Module):
        self.queries: list[torch.Tensor] = []
        self.registers: list[torch.Tensor] = []
        self.extra: dict[str, torch.Tensor] = {}
        record_calls(net, "encode_query", self.queries)
        record_calls(net.guassian_diffusion, "sample", self.registers)
        net.textual_perturbation_sampler.register_forward_hook(
            lambda _m, _i, out: self.extra.__setitem__("x0", out.detach()))
        net.video_qformer.register_forward_hook(lambda _m, _i, out: self.extra.__setitem__("cond", out.detach()))
        pred = net.get_pred_from_raw_query

        def pred_rec(*a, **k):
            self.extra["encoded_clip"], self.extra["encoded_frame"] = a[3].detach(), a[4].detach()
            return pred(*a, **k)

        net.get_pred_from_raw_query = pred_rec

    def outputs(self, input_list: list) -> dict[str, np.ndarray]:
        return {
            "query_first": to_np(input_list[-1]), "query_second": to_np(self.queries[-1]),
            "mean_video_queries": to_np(input_list[15]), "x0": to_np(self.extra["x0"]),
            "cond": to_np(self.extra["cond"]), "mu": to_np(input_list[9]), "logvar": to_np(input_list[10]),
            "registers": to_np(self.registers[-1]), "eps_true": to_np(input_list[12][0]),
            "eps_pred": to_np(input_list[13]),
            "encoded_clip": to_np(self.extra["encoded_clip"]), "encoded_frame": to_np(self.extra["encoded_frame"]),
            "clip_scale_scores": to_np(input_list[0]), "clip_scale_scores_raw": to_np(input_list[1]),
            "frame_scale_scores": to_np(input_list[3]), "frame_scale_scores_raw": to_np(input_list[4]),
        }


def perturbation_draws(rec: Recorder) -> dict[str, np.ndarray]:
    """Normal.sample results (K, D, B) of TextSampler, alpha then beta -> (B, K, D) as the sampler uses them."""
    assert len(rec.normal) == 2, len(rec.normal)
    alpha, beta = (x.permute(2, 0, 1) for x in rec.normal)
    ddpm_t = [out for tag, args, out in rec.randint if tag == "" and len(args) == 3]  # (0, T, (B,))
    return {"alpha": to_np(alpha), "beta": to_np(beta), "ddpm_t": to_np(ddpm_t[0])}


def losses_golden(m: dict, small: dict[str, np.ndarray], small_meta: dict, cha: dict) -> tuple[dict, dict]:
    torch.manual_seed(0)
    net = prove_harness(m, small, small_meta)
    assert small_meta["config"]["input_drop"] == 0 and small_meta["config"]["drop"] == 0
    net.train()  # training path of the original (train=True in encode_context), every dropout p = 0
    cfg = copy.deepcopy(cha)
    cfg["hard_pool_size"] = HARD_POOL_SIZE
    t = {k: torch.from_numpy(v) for k, v in small.items() if k.startswith("input/")}
    batch = dict(clip_video_features=t["input/clip_feat"], frame_video_features=t["input/frame_feat"],
                 videos_mask=t["input/frame_mask"], text_feat=t["input/query_feat"], text_mask=t["input/query_mask"],
                 text_labels=list(LOSS_LABELS))
    probe = ForwardProbe(net)
    rec = Recorder()
    criterion = m["loss"].loss(cfg)
    loss_probe = LossProbe(criterion, rec)
    arrays: dict[str, np.ndarray] = {f"input/{k}": small[f"input/{k}"] for k in
                                     ("clip_feat", "frame_feat", "frame_mask", "query_feat", "query_mask")}
    arrays["input/labels"] = to_np(LOSS_LABELS)
    torch.manual_seed(0)
    with rec:
        input_list = net(batch)
        arrays.update({f"draws/{k}": v for k, v in perturbation_draws(rec).items()})
        arrays.update({f"train/{k}": v for k, v in probe.outputs(input_list).items()})
        totals = {}
        for mode, hard in (("random", False), ("hard", True)):
            rec.reset()
            criterion.cfg["use_hard_negative"] = hard
            total, dre = loss_probe.run(input_list, batch)
            terms = loss_probe.terms(input_list)
            check = float((weighted_total(terms, cfg["loss_factor"]) - total).detach().abs())
            print(f"losses ({mode}): total {float(total):.6f}, recomposed from the terms: |diff| = {check:.3g}")
            assert check < 1e-6, check
            for name in TERMS:
                arrays[f"loss/{mode}/{name}"] = to_np(terms[name])
            arrays[f"loss/{mode}/total"] = to_np(total)
            arrays[f"loss/{mode}/diffusion_return"] = to_np(dre)
            for scale, idx in (("clip", 0), ("frame", 3)):  # input_list[0], [3]: normalised (cosine) scores
                got = resolve_triplet(input_list[idx], LOSS_LABELS, hard, HARD_POOL_SIZE, triplet_draws(rec, scale))
                arrays.update({f"draws/{mode}/{scale}_{k}": v for k, v in got.items()})
            totals[mode] = float(total)
    meta = dict(
        source=dict(repo="lijun2005/CVPR26-DreamPRVR", commit=ORIGINAL_COMMIT, torch=torch.__version__),
        model_from="small-seed0.npz (state/*, meta.config)", config=small_meta["config"],
        mode="model.train(), every dropout p = 0 (input_drop = drop = 0): the train=True path, deterministic",
        labels=LOSS_LABELS,
        loss_cfg={k: cfg[k] for k in ("loss_factor", "neg_factor", "deterministic_tau", "margin", "hard_pool_size")},
        loss_cfg_note="Charades preset (Configs/cha.py) except hard_pool_size = 3 (Charades: 20)",
        terms=list(TERMS), weights={"clip_nce": "loss_factor[0]", "frame_nce": "loss_factor[1]",
                                    "clip_triplet": 1, "frame_triplet": 1, "query_diversity": "loss_factor[2]",
                                    "query_similarity_preservation": "loss_factor[3]", "kl": "loss_factor[4]",
                                    "diffusion": "loss_factor[5]"},
        totals=totals, seed=0,
    )
    return arrays, meta


# ----------------------------------------------------------------------------------------------- steps
def write_dataset(root: Path, cfg: dict, rng: np.random.Generator) -> dict:
    """A tiny collection in the release layout: captions, RoBERTa-style token features, frame features."""
    col = cfg["collection"]
    text_dir, feat_dir = root / col / "TextData", root / col / "FeatureData" / cfg["visual_feature"]
    text_dir.mkdir(parents=True)
    feat_dir.mkdir(parents=True)
    n_frames = [7, 150, 40, 24, 33, 61, 12, 48, 45, 18, 64, 36, 55]  # < 32 (repeated cells), > 128 (sampled), ...
    n_caps = [1, 2, 3, 1, 2, 3, 2, 1, 3, 2, 1, 2, 3]
    assert len(n_frames) == len(n_caps) == N_VIDEOS
    lines, info = [], {"videos": [], "captions": {}}
    with h5py.File(feat_dir / "feature.hdf5", "w") as fv, h5py.File(
            text_dir / f"roberta_{col}_query_feat.hdf5", "w") as ft:
        for v in range(N_VIDEOS):
            vid = f"v{v:02d}"
            fv[vid] = rng.standard_normal((n_frames[v], cfg["visual_feat_dim"])).astype(np.float32)
            info["videos"].append(vid)
            for c in range(n_caps[v]):
                cap = f"{vid}#enc#{c}"
                n_tok = int(rng.integers(4, 36))  # some longer than max_desc_l = 30
                ft[cap] = rng.standard_normal((n_tok, cfg["q_feat_size"])).astype(np.float32)
                info["captions"][cap] = n_tok
                lines.append(f"{cap} caption {v} {c}")
    for split in ("train", "val", "test"):
        (text_dir / f"{col}{split}.caption.txt").write_text("\n".join(lines) + "\n")
    (feat_dir / "video2frames.txt").write_text(repr({vid: [] for vid in info["videos"]}))
    info["n_frames"], info["n_caps"] = dict(zip(info["videos"], n_frames, strict=True)), dict(
        zip(info["videos"], n_caps, strict=True))
    return info


class FirstBatches:
    """The first n batches of a DataLoader (a fresh shuffled pass each time it is iterated)."""

    def __init__(self, loader: DataLoader, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if i == self.n:
                return
            yield b


def steps_golden(m: dict, cha: dict, work: Path) -> tuple[dict, dict, dict]:
    main, dp, utils = m["main"], m["data_provider"], m["utils"]
    cfg = copy.deepcopy(cha)
    cfg.update(STEP_MODEL)
    cfg.update(STEP_RUN)
    cfg.update(root=str(work), data_root=str(work / "data"), model_root=str(work / "run"))
    cfg["ckpt_path"] = str(work / "run" / "ckpt")
    Path(cfg["ckpt_path"]).mkdir(parents=True)
    data_info = write_dataset(work / "data", cfg, np.random.default_rng(0))

    # main.main(): set_seed, get_datasets (train loader as in Datasets/builder.py), get_models, get_losses, get_opts
    utils.set_seed(cfg["seed"])
    col = cfg["collection"]
    text_dir = work / "data" / col / "TextData"
    feats = str(work / "data" / col / "FeatureData" / cfg["visual_feature"] / "feature.hdf5")
    text_feats = str(text_dir / f"roberta_{col}_query_feat.hdf5")
    train_set = dp.Dataset4PRVR(str(text_dir / f"{col}train.caption.txt"), feats, text_feats, cfg)
    batch_videos: list[list[str]] = []

    def collate(data):
        out = dp.collate_train(data)  # sorts `data` in place (by frame count, descending)
        batch_videos.append([d[5] for d in data])
        return out

    loader = DataLoader(train_set, batch_size=cfg["batchsize"], shuffle=True, pin_memory=cfg["pin_memory"],
                        num_workers=cfg["num_workers"], collate_fn=collate)
    val_ids = dp.read_video_ids(str(text_dir / f"{col}val.caption.txt"))
    ctx_loader = DataLoader(dp.VisDataSet4PRVR(feats, None, cfg, video_ids=val_ids), collate_fn=dp.collate_frame_val,
                            batch_size=cfg["eval_context_bsz"], num_workers=0, shuffle=False)
    query_loader = DataLoader(dp.TxtDataSet4PRVR(str(text_dir / f"{col}val.caption.txt"), text_feats, cfg),
                              collate_fn=dp.collate_text_val, batch_size=cfg["eval_query_bsz"], num_workers=0,
                              shuffle=False)
    model = m["models_builder"].get_models(cfg)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    criterion = sys.modules["Losses.builder"].get_losses(cfg)
    val_criterion = sys.modules["Validations.builder"].get_validations(cfg)
    optimizer = m["opts_builder"].get_opts(cfg, model, loader)
    steps_per_epoch = len(loader)
    t_total = steps_per_epoch * cfg["n_epoch"]
    assert steps_per_epoch == 3, steps_per_epoch

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    name_of = {id(p): n for n, p in params.items()}
    rec = Recorder(m["optimization"])
    loss_probe = LossProbe(criterion, rec)
    arrays: dict[str, np.ndarray] = {f"init/{k}": to_np(v) for k, v in init.items()}
    log: list[dict] = []
    current: dict = {}

    def pre_forward(_m, args):
        current.update(k=len(log) + 1)
        rec.reset()

    model.register_forward_pre_hook(pre_forward)
    crit_call = criterion.forward

    def crit_rec(input_list, batch):
        loss_probe.values = {}
        total, dre = crit_call(input_list, batch)
        k = current["k"]
        hard = bool(criterion.cfg["use_hard_negative"])
        terms = loss_probe.terms(input_list)
        assert float((weighted_total(terms, cfg["loss_factor"]) - total).detach().abs()) < 1e-6
        for name in TERMS:
            arrays[f"step/{k}/loss/{name}"] = to_np(terms[name])
        arrays[f"step/{k}/loss/total"] = to_np(total)
        arrays[f"step/{k}/loss/diffusion_return"] = to_np(dre)
        labels = batch["text_labels"]
        arrays.update({f"draws/{k}/{n}": v for n, v in perturbation_draws(rec).items()})
        for scale, idx in (("clip", 0), ("frame", 3)):
            got = resolve_triplet(input_list[idx], labels, hard, cfg["hard_pool_size"], triplet_draws(rec, scale))
            arrays.update({f"draws/{k}/{scale}_{n}": v for n, v in got.items()})
        for key in ("clip_video_features", "frame_video_features", "videos_mask", "text_feat", "text_mask"):
            arrays[f"batch/{k}/{key}"] = to_np(batch[key])
        arrays[f"batch/{k}/text_labels"] = to_np(labels)
        current.update(hard=hard, total=float(total))
        return total, dre

    criterion.forward = crit_rec
    opt_step = optimizer.step

    def step_rec(closure=None):
        k = current["k"]
        g0 = optimizer.param_groups[0]
        first = next(p for p in g0["params"] if p.grad is not None)
        n_before = optimizer.state[first]["step"] if optimizer.state[first] else 0
        lr = g0["lr"] * g0["schedule"].get_lr(n_before)
        grads = {n: params[n].grad.detach().clone() for n in names}
        no_grad = [n for n in names if params[n].grad is None]
        assert not no_grad, no_grad
        arrays[f"step/{k}/grad_norm"] = np.array([float(g.norm()) for g in grads.values()], np.float32)
        rec.clipped = []
        out = opt_step(closure)
        clipped = {name_of[id(p)]: g for p, g, _ in rec.clipped}
        assert sorted(clipped) == sorted(names)
        arrays[f"step/{k}/weight_norm"] = np.array([float(params[n].detach().norm()) for n in names], np.float32)
        if k == 1:
            arrays.update({f"grad1/{n}": to_np(g) for n, g in grads.items()})
            arrays.update({f"grad1_clipped/{n}": to_np(clipped[n]) for n in names})
            arrays.update({f"weights1/{n}": to_np(v) for n, v in model.state_dict().items()})
            current["clipped_at_step1"] = [n for n in names if float(grads[n].norm()) > g0["max_grad_norm"]]
        log.append(dict(step=k, epoch=current["epoch"], lr=lr, lr_multiplier=g0["schedule"].get_lr(n_before),
                        optimizer_step_before=int(n_before), hard_negative=current["hard"],
                        total=current["total"], videos=batch_videos[-1],
                        n_clipped=sum(float(g.norm()) > g0["max_grad_norm"] for g in grads.values()),
                        **({"clipped_at_step1": current["clipped_at_step1"]} if k == 1 else {})))
        return out

    optimizer.step = step_rec
    logger = logging.getLogger("dreamprvr-reference")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    best_val = [0.0, 0.0, 0.0, 0.0, 0.0]
    epoch_log = []
    with rec:
        epoch = 0
        while len(log) < N_STEPS:
            left = N_STEPS - len(log)
            current["epoch"] = epoch
            run_loader = loader if left >= steps_per_epoch else FirstBatches(loader, left)
            loss_avg, dre_avg = main.train_one_epoch(epoch, run_loader, model, criterion, cfg, optimizer)
            with torch.no_grad():
                val_meter, best_val, _ = main.val_one_epoch(epoch, ctx_loader, query_loader, model, val_criterion,
                                                            cfg, optimizer, best_val, loss_avg, logger, dre_avg)
            epoch_log.append(dict(epoch=epoch, steps=len(log), loss_avg=loss_avg, val=val_meter[:5]))
            epoch += 1
    arrays.update({f"weights10/{k}": to_np(v) for k, v in model.state_dict().items()})
    arrays["lr"] = np.array([s["lr"] for s in log], np.float64)
    meta = dict(
        source=dict(repo="lijun2005/CVPR26-DreamPRVR", commit=ORIGINAL_COMMIT, torch=torch.__version__),
        config=cfg, model_config=model_cfg_from_run(cfg),
        overrides_of_charades=dict(**STEP_MODEL, **STEP_RUN), t_total=t_total,
        warmup=cfg["lr_warmup_proportion"], warmup_steps=cfg["lr_warmup_proportion"] * t_total,
        steps_per_epoch=steps_per_epoch, hard_negative_start_epoch=cfg["hard_negative_start_epoch"],
        max_grad_norm=optimizer.param_groups[0]["max_grad_norm"],
        param_names=names, frozen=[n for n, p in model.named_parameters() if not p.requires_grad],
        weight_decay={name_of[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]},
        steps=log, epochs=epoch_log, data=data_info, seed=cfg["seed"],
        mode="model.train(), every dropout p = 0; validation (main.val_one_epoch) after every epoch as main.py does",
    )
    return arrays, meta, dict(model=model, optimizer=optimizer, cfg=cfg, epoch=epoch - 1, best_val=best_val)


def write_checkpoint(m: dict, run: dict, path: Path) -> dict:
    m["utils"].save_ckpt(run["model"], run["optimizer"], run["cfg"], str(path), run["epoch"], run["best_val"])
    info: dict = {"keys": sorted(torch.load(path, map_location="cpu", weights_only=False))}
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        info["weights_only"] = "ok"
    except Exception as e:  # reported in meta.checkpoint, not hidden
        why = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln] or [str(e).splitlines()[0]]
        info["weights_only"] = f"fails: {type(e).__name__}: {why[0]}"
    return info


# ----------------------------------------------------------------------------------------------- main
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, type=Path, help="src/ folder of lijun2005/CVPR26-DreamPRVR")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--small", type=Path, help="small-seed0.npz (default: tests/golden's, as the tests)",
                    default=Path(__file__).resolve().parents[2] / "tests" / "golden" / "small-seed0.npz")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: sums in a fixed order, the same bits on every run
    git = args.original.parent / ".git"
    if git.exists():
        commit = subprocess.run(["git", "-C", str(args.original.parent), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        if commit and commit != ORIGINAL_COMMIT:
            print(f"warning: original at {commit}, these files describe {ORIGINAL_COMMIT}")
    m = load_original(args.original)
    cha = charades_cfg(args.original)
    small, small_meta = load_npz(args.small)
    args.out.mkdir(parents=True, exist_ok=True)

    arrays, meta = losses_golden(m, small, small_meta, cha)
    save_npz(args.out / "dreamprvr-losses-seed0.npz", arrays, meta)
    work = Path(tempfile.gettempdir()) / "dreamprvr-reference"  # a fixed path: it is part of the saved config
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        arrays, meta, run = steps_golden(m, cha, work)
        ckpt = args.out / "dreamprvr-authors-small.ckpt"
        meta["checkpoint"] = write_checkpoint(m, run, ckpt)
        save_npz(args.out / "dreamprvr-steps-seed0.npz", arrays, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("checkpoint:", meta["checkpoint"])
    for s in meta["steps"]:
        print(f"step {s['step']:2d} epoch {s['epoch']} lr {s['lr']:.3e} hard {s['hard_negative']!s:5s} "
              f"loss {s['total']:.6f} clipped tensors {s['n_clipped']}")
    for name in ("dreamprvr-losses-seed0.npz", "dreamprvr-steps-seed0.npz", "dreamprvr-authors-small.ckpt"):
        p = args.out / name
        print(f"{p}: {p.stat().st_size / 1e6:.2f} MB sha256 {digest(p)}")


if __name__ == "__main__":
    main()
