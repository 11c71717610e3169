"""Loading the authors' DreamPRVR code (lijun2005/CVPR26-DreamPRVR) on CPU, with recording hooks.

Nothing of the original is copied here: `load_original(path)` puts the `src/` folder given on the command
line on `sys.path` and applies these runtime patches (no file of the original is edited):

1. `torch.Tensor.cuda = lambda self, *a, **k: self`: the original moves tensors with `.cuda()`
   (`generate_gauss_weight`, `query_diverse_loss`, `Utils.utils.gpu`, `eval_q2m`); on CPU they stay put.
2. Empty stand-in modules for `ipdb`, `seaborn`, `matplotlib`, `matplotlib.pyplot`: imported at module level
   by `main.py`, `Utils/*.py`, `Datasets/builder.py`, `Validations/validations.py`, never used on the paths run.
3. `sys.argv = ["main.py"]` while `main` is imported (it parses arguments at import time); its default
   dataset name is never used because `main.main()` is not called.
4. The name `tqdm` in the namespaces of `main` and `Validations.validations` is rebound to
   `functools.partial(tqdm, disable=True)` (no progress bars; no effect on numbers).

Recording hooks (they return exactly what the wrapped call returns, so no number changes):
`Recorder` wraps `torch.distributions.Normal.sample` (the textual perturbation draws), `torch.randint`
(random negatives; the discarded diffusion timestep draw) and `Opts.optimization.clip_grad_norm_` (the
per-tensor clipping inside `BertAdam.step`).
"""

from __future__ import annotations

import functools
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tqdm


def load_original(src: str | Path) -> dict[str, types.ModuleType]:
    """Import the original modules from `src` (the repository's `src/` folder) with the patches above."""
    src = str(Path(src).resolve())
    if not Path(src, "Models", "DreamPRVR", "model.py").exists():
        raise SystemExit(f"{src}: not the DreamPRVR src/ folder (Models/DreamPRVR/model.py missing)")
    torch.Tensor.cuda = lambda self, *a, **k: self  # patch 1
    for name in ("ipdb", "seaborn", "matplotlib", "matplotlib.pyplot"):  # patch 2
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    if src not in sys.path:
        sys.path.insert(0, src)
    argv, sys.argv = sys.argv, ["main.py"]  # patch 3
    try:
        import main  # noqa: F401  (the original training script)
    finally:
        sys.argv = argv
    import Validations.validations as validations

    for mod in (sys.modules["main"], validations):  # patch 4
        mod.tqdm = functools.partial(tqdm.tqdm, disable=True)
    import Datasets.data_provider as data_provider
    import Losses.loss as loss
    import Models.builder as models_builder
    import Models.DreamPRVR.model as model
    import Opts.builder as opts_builder
    import Opts.optimization as optimization
    import Utils.utils as utils

    return dict(main=sys.modules["main"], model=model, models_builder=models_builder, loss=loss,
                opts_builder=opts_builder, optimization=optimization, data_provider=data_provider, utils=utils)


def model_cfg_from_run(cfg: dict) -> dict:
    """The `EDict` that `Models.builder.get_models` builds from a flat run config (same keys)."""
    return dict(
        visual_input_size=cfg["visual_feat_dim"], query_input_size=cfg["q_feat_size"],
        hidden_size=cfg["hidden_size"], max_ctx_l=cfg["max_ctx_l"], max_desc_l=cfg["max_desc_l"],
        map_size=cfg["map_size"], input_drop=cfg["input_drop"], drop=cfg["drop"], n_heads=cfg["n_heads"],
        initializer_range=cfg["initializer_range"], margin=cfg["margin"], use_hard_negative=False,
        hard_pool_size=cfg["hard_pool_size"], sft_factor=cfg["sft_factor"], num_registers=cfg["num_registers"],
        timesteps=cfg["timesteps"], attention_num=cfg["attention_num"],
        num_diffusion_layers=cfg["num_diffusion_layers"])


class Recorder:
    """Records the random draws of the original while `with recorder:` is active.

    `normal`: every `Normal.sample` result in call order; `randint`: (tag, args, result) for every
    `torch.randint`, tagged with `recorder.tag` at call time; `clipped`: (param, grad after clipping) per
    `clip_grad_norm_` call inside the optimiser.
    """

    def __init__(self, optimization: types.ModuleType | None = None):
        self.optimization = optimization
        self.tag = ""
        self.normal: list[torch.Tensor] = []
        self.randint: list[tuple[str, tuple, torch.Tensor]] = []
        self.clipped: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self._saved: dict[str, Any] = {}

    def reset(self) -> None:
        self.normal, self.randint, self.clipped = [], [], []

    def __enter__(self) -> Recorder:
        normal_sample = torch.distributions.Normal.sample
        randint = torch.randint
        rec = self

        def sample(self_, sample_shape=torch.Size()):
            out = normal_sample(self_, sample_shape)
            rec.normal.append(out.detach().clone())
            return out

        def randint_rec(*args, **kwargs):
            out = randint(*args, **kwargs)
            rec.randint.append((rec.tag, args, out.detach().clone()))
            return out

        self._saved = dict(sample=normal_sample, randint=randint)
        torch.distributions.Normal.sample = sample
        torch.randint = randint_rec
        if self.optimization is not None:
            clip = self.optimization.clip_grad_norm_
            self._saved["clip"] = clip

            def clip_rec(p, max_norm, *a, **k):
                norm = clip(p, max_norm, *a, **k)
                rec.clipped.append((p, p.grad.detach().clone(), float(norm)))
                return norm

            self.optimization.clip_grad_norm_ = clip_rec
        return self

    def __exit__(self, *exc) -> None:
        torch.distributions.Normal.sample = self._saved["sample"]
        torch.randint = self._saved["randint"]
        if "clip" in self._saved:
            self.optimization.clip_grad_norm_ = self._saved["clip"]


def record_calls(obj: Any, attr: str, sink: list) -> Callable[[], None]:
    """Wrap the bound method `obj.attr` so every return value is appended to `sink`; returns an undo."""
    fn = getattr(obj, attr)

    def wrapped(*a, **k):
        out = fn(*a, **k)
        sink.append(out)
        return out

    setattr(obj, attr, wrapped)
    return lambda: delattr(obj, attr)


def to_np(x: torch.Tensor | float | int | list) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy().astype(np.float32) if x.is_floating_point() else x.numpy().astype(np.int64)
    arr = np.asarray(x)
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int64)


def save_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Arrays by name plus `meta` (UTF-8 JSON as uint8), uncompressed like the existing golden files."""
    out = dict(arrays)
    out["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    np.savez(path, **out)


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    z = np.load(path)
    return {k: z[k] for k in z.files if k != "meta"}, json.loads(bytes(z["meta"]))
