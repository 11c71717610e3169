"""Plumbing for bench/reference/hlformer.py: load the ORIGINAL HLFormer code with runtime patches,
write deterministic npz files, and record what the original loss computes without changing a number.

Nothing of the original is copied here; it is imported from the path given on the command line.
Runtime patches (all done at run time, the original files are never edited):

1. ``sys.modules`` stubs for ``ipdb``, ``seaborn``, ``matplotlib``, ``matplotlib.pyplot``: imported at the
   top of the original's modules, never used on the paths run here.
2. ``torch.Tensor.cuda`` -> identity: the original moves tensors to the GPU inside
   ``generate_gauss_weight`` (both attention kinds), ``query_diverse_loss`` (``N_one_hot.cuda()``),
   ``eval_q2m`` and ``Utils.utils.gpu``; everything runs on CPU here.
3. ``Configs/<name>.py`` is executed with ``os.makedirs`` replaced by a no-op (at import it creates the
   authors' ``/data2/...`` run folders); ``get_cfg_defaults`` (which writes a yaml there) is not called.
   ``cfg['visual_feat_dim']``, set by the original's ``get_datasets`` from the feature files, is set by hand.
4. ``main.py`` is imported (for ``train_one_epoch``) with ``sys.argv`` temporarily set to
   ``['main.py', '-d', 'cha']``: it parses the command line at import.
5. While a loss is recorded (``LossProbe``): ``torch.randint`` is wrapped to record every value it returns,
   the loss instance's ``get_clip_triplet_loss`` is wrapped to record its scores/labels/result,
   ``Models.HLFormer.lorentz.oxy_angle`` / ``half_aperture`` are wrapped to record their results, and
   forward hooks record the two ``clip_nce`` modules and ``query_diverse_loss``. All wrappers return the
   original's own results unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STUBS = ("ipdb", "seaborn", "matplotlib", "matplotlib.pyplot")


def load_original(src: Path) -> types.SimpleNamespace:
    """Import the original modules from ``src`` (the release's ``src`` folder), patched as described above."""
    for name in _STUBS:
        sys.modules.setdefault(name, types.ModuleType(name))
    torch.Tensor.cuda = lambda self, *a, **k: self  # patch 2
    sys.path.insert(0, str(src))
    import Datasets.data_provider as data_provider
    import Losses.builder as losses_builder
    import Losses.loss as loss_module
    import Models.builder as models_builder
    import Models.HLFormer.lorentz as lorentz
    import Models.HLFormer.model as model_module
    import Opts.builder as opts_builder
    import Utils.utils as utils
    import Validations.validations as validations

    argv = sys.argv
    sys.argv = ["main.py", "-d", "cha"]  # patch 4
    try:
        import main
    finally:
        sys.argv = argv
    return types.SimpleNamespace(
        src=src, data_provider=data_provider, get_losses=losses_builder.get_losses, loss_module=loss_module,
        get_models=models_builder.get_models, lorentz=lorentz, model_module=model_module,
        get_opts=opts_builder.get_opts, utils=utils, validations=validations, main=main,
    )


def load_config(src: Path, name: str) -> dict[str, Any]:
    """The original ``Configs/<name>.py`` ``cfg`` dict, executed with ``os.makedirs`` a no-op (patch 3)."""
    path = src / "Configs" / f"{name}.py"
    real_makedirs = os.makedirs
    os.makedirs = lambda *a, **k: None
    try:
        namespace: dict[str, Any] = {"__name__": f"hlformer_config_{name}", "__file__": str(path)}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    finally:
        os.makedirs = real_makedirs
    return dict(namespace["cfg"])


def seed_all(seed: int) -> None:
    """What the original's ``Utils.utils.set_seed`` does on CPU."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().copy()
    return np.asarray(x)


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """An ``np.load``-able npz with fixed zip timestamps (byte-identical for identical content)."""
    entries = dict(arrays)
    entries["meta"] = np.frombuffer(json.dumps(meta, indent=1).encode(), np.uint8)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in entries.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            arr = np.asarray(arr)
            arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # keeps 0-d arrays 0-d
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(info, buf.getvalue())


# ----------------------------------------------------------------------------------------------- losses
TERMS = ("clip_nce", "clip_trip", "frame_nce", "frame_trip", "query_diversity", "entailment")
# weight of each term in the original's total (index into cfg['loss_factor']; None = unweighted)
TERM_FACTOR = {"clip_nce": 0, "clip_trip": None, "frame_nce": 1, "frame_trip": None,
               "query_diversity": 2, "entailment": 3}


class LossProbe:
    """Records every call of the original ``Losses.loss.loss`` made while active (patch 5).

    Each record: the raw (unweighted) terms, the original's total, the triplet draws and the tensors the
    entailment term uses. Nothing the original computes is changed.
    """

    def __init__(self, orig: types.SimpleNamespace, criterion: torch.nn.Module) -> None:
        self.orig = orig
        self.criterion = criterion
        self.records: list[dict[str, Any]] = []
        self._cur: dict[str, Any] | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[LossProbe]:
        crit, L = self.criterion, self.orig.lorentz
        real_randint, real_triplet = torch.randint, crit.get_clip_triplet_loss
        real_angle, real_aperture = L.oxy_angle, L.half_aperture

        def randint(*a: Any, **k: Any) -> torch.Tensor:
            out = real_randint(*a, **k)
            if self._cur is not None:
                self._cur["randint"].append(dict(args=a, size=tuple(k.get("size", ())), value=out.clone()))
            return out

        def triplet(scores: torch.Tensor, labels: list[int]) -> torch.Tensor:
            start = len(self._cur["randint"])
            out = real_triplet(scores, labels)
            self._cur["triplet"].append(dict(
                scores=scores.detach().clone(), labels=list(labels), out=out.detach().clone(),
                draws=self._cur["randint"][start:], hard=bool(crit.cfg["use_hard_negative"]),
                hard_pool_size=int(crit.cfg["hard_pool_size"])))
            return out

        def angle(*a: Any, **k: Any) -> torch.Tensor:
            out = real_angle(*a, **k)
            self._cur["video_angle"] = out.detach().clone()
            return out

        def aperture(*a: Any, **k: Any) -> torch.Tensor:
            out = real_aperture(*a, **k)
            self._cur["video_aperture"] = out.detach().clone()
            return out

        def keep(key: str):  # forward hook storing a sub-module's output
            def hook(_m: torch.nn.Module, _inp: Any, out: torch.Tensor) -> None:
                self._cur[key] = out.detach().clone()
            return hook

        def begin(_m: torch.nn.Module, _inp: Any) -> None:
            self._cur = dict(randint=[], triplet=[])

        def end(_m: torch.nn.Module, _inp: Any, out: torch.Tensor) -> None:
            self._cur["total"] = out.detach().clone()
            self.records.append(self._finish(self._cur))
            self._cur = None

        handles = [crit.register_forward_pre_hook(begin), crit.register_forward_hook(end),
                   crit.clip_nce_criterion.register_forward_hook(keep("clip_nce")),
                   crit.video_nce_criterion.register_forward_hook(keep("frame_nce")),
                   crit.qdl.register_forward_hook(keep("query_diversity"))]
        torch.randint, crit.get_clip_triplet_loss = randint, triplet
        L.oxy_angle, L.half_aperture = angle, aperture
        try:
            yield self
        finally:
            torch.randint, L.oxy_angle, L.half_aperture = real_randint, real_angle, real_aperture
            del crit.get_clip_triplet_loss  # back to the class's method
            assert crit.get_clip_triplet_loss.__func__ is real_triplet.__func__
            for h in handles:
                h.remove()

    def _finish(self, cur: dict[str, Any]) -> dict[str, Any]:
        clip_t, frame_t = cur["triplet"]
        terms = dict(clip_nce=cur["clip_nce"], clip_trip=clip_t["out"], frame_nce=cur["frame_nce"],
                     frame_trip=frame_t["out"], query_diversity=cur["query_diversity"],
                     entailment=torch.clamp(cur["video_angle"] - cur["video_aperture"], min=0).mean())
        # the original's total, re-added in its own order from the recorded terms: must be bit-identical
        f = self.criterion.cfg["loss_factor"]
        loss_sim = (f[0] * terms["clip_nce"] + terms["clip_trip"]
                    + f[1] * terms["frame_nce"] + terms["frame_trip"])
        again = loss_sim + f[2] * terms["query_diversity"] + f[3] * terms["entailment"]
        assert torch.equal(again, cur["total"]), (again, cur["total"])
        draws = {}
        for prefix, t in (("clip", clip_t), ("frame", frame_t)):
            draws.update({f"{prefix}_{k}": v for k, v in triplet_draws(t).items()})
        return dict(terms=terms, total=cur["total"], draws=draws, hard=clip_t["hard"],
                    video_angle=cur["video_angle"], video_aperture=cur["video_aperture"])


def triplet_draws(t: dict[str, Any]) -> dict[str, np.ndarray]:
    """Split the draws of one ``get_clip_triplet_loss`` call and derive which negative each picked.

    v2t (one per video, random mode only): position in that video's negative-query scores sorted in
    descending order. t2v (one per query): position in the query's row sorted in descending order with its
    positive video set to 999 (so position 0 is the positive; draws are in [1, max)). The picked indices
    are derived here with the same torch.sort calls as the original.
    """
    scores, labels, draws = t["scores"], np.array(t["labels"]), t["draws"]
    n_q, n_v = scores.shape
    v2t_draws = [] if t["hard"] else [int(d["value"].item()) for d in draws[:-1]]
    assert len(v2t_draws) == (0 if t["hard"] else n_v) and tuple(draws[-1]["value"].shape) == (n_q,)
    t2v = draws[-1]["value"]
    v2t_scores = scores.t()
    v2t_neg = []
    for i in range(n_v):
        neg_idx = np.where(labels != i)[0]
        _, order = torch.sort(v2t_scores[i][neg_idx], descending=True)
        v2t_neg.append(int(neg_idx[int(order[0 if t["hard"] else v2t_draws[i]])]))
    rows = torch.arange(n_q)
    masked = scores.clone()
    masked[rows, torch.as_tensor(labels)] = 999
    _, order = torch.sort(masked, descending=True, dim=1)
    out = dict(t2v=t2v.numpy().astype(np.int64), t2v_neg_video=order[rows, t2v].numpy().astype(np.int64),
               v2t_neg_query=np.array(v2t_neg, np.int64),
               t2v_high=np.array(int(draws[-1]["args"][1]), np.int64))
    if not t["hard"]:
        out["v2t"] = np.array(v2t_draws, np.int64)
        out["v2t_high"] = np.array([d["args"][1] for d in draws[:-1]], np.int64)
    return out
