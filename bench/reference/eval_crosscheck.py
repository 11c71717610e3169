"""One prvr checkpoint scored by prvr's evaluator and by the authors' validation code, on the same split.

    .venv/bin/python bench/reference/eval_crosscheck.py --original /tmp/orig-dreamprvr/src \\
        --ref-site-packages /tmp/refvenv-dreamprvr/lib/python3.11/site-packages --data ROOT --checkpoint RUN/last.safetensors

The weights are renamed to the original's names and loaded into `Models.builder.get_models` (the checkpoint's
config); the original's `Datasets.builder.get_datasets` reads ROOT and `Validations.builder.get_validations` scores
the `val` captions (its `main.val_one_epoch` path), prvr's `evaluate` scores the same split. Prints both
R@1/5/10/100/SumR. The original is imported from `--original` with the patches of `_common_dreamprvr.py`, in
prvr's environment; easydict comes from `--ref-site-packages`, appended to sys.path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, type=Path)
    ap.add_argument("--ref-site-packages", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--checkpoint", required=True, type=Path)
    args = ap.parse_args()
    sys.path.append(str(args.ref_site_packages))
    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)
    from _common_dreamprvr import load_original
    from dreamprvr import charades_cfg

    from prvr.data.layout import DatasetLayout
    from prvr.eval.evaluator import evaluate
    from prvr.models.checkpoint import load_checkpoint
    from prvr.models.dreamprvr.convert import original_name

    m = load_original(args.original)
    datasets, validations = (__import__(f"{n}.builder", fromlist=["builder"]) for n in ("Datasets", "Validations"))
    model, rc, state = load_checkpoint(args.checkpoint)
    ours = evaluate(model.eval(), DatasetLayout(args.data, rc.data.collection), "val").metrics
    cfg = charades_cfg(args.original)
    cfg.update(hidden_size=rc.model.hidden_size, data_root=str(args.data.resolve()), num_workers=0, pin_memory=False,
               model_root=tempfile.mkdtemp(prefix="dreamprvr-eval-"))
    net = m["models_builder"].get_models(cfg)
    weights = model.state_dict()
    net.load_state_dict({k: weights[original_name(k)] for k in net.state_dict()})
    cfg, _, ctx_loader, query_loader, _, _ = datasets.get_datasets(cfg)
    with torch.no_grad():
        theirs = validations.get_validations(cfg)(net, ctx_loader, query_loader)[:5]
    print(f"checkpoint {args.checkpoint} (epoch {state.get('epoch')})")
    print("prvr evaluate:       " + " ".join(f"{k} {v:.4f}" for k, v in ours.items()))
    print("original validation: " + " ".join(f"{k} {float(v):.4f}" for k, v in
                                             zip(("R@1", "R@5", "R@10", "R@100", "SumR"), theirs, strict=True)))


if __name__ == "__main__":
    main()
