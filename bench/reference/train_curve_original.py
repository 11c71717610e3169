"""Train the authors' DreamPRVR with their own loop on a dataset in the release layout; one metrics.jsonl line per epoch.

    /tmp/refvenv-dreamprvr/bin/python bench/reference/train_curve_original.py --original /tmp/orig-dreamprvr/src \\
        --data ROOT --out RUN --seed 0 --max-epochs 15 [--set hidden_size=128 --set batchsize=32 ...]

What runs is the original's: `Datasets.builder.get_datasets` (its data provider, `collate_train`, a shuffled
DataLoader), `Models.builder.get_models`, `Losses.builder.get_losses`, `Opts.builder.get_opts` (BertAdam,
warmup_linear over `n_epoch` epochs, decay groups), `main.train_one_epoch` and `main.val_one_epoch` (validation on
the `val` captions after every epoch), after `Utils.utils.set_seed(seed)` as `main.main()` does. The config is
Configs/cha.py (evaluated from its syntax tree, see dreamprvr.py) with the run's overrides. Nothing of the original
is copied here; it is imported from `--original` with the runtime patches of `_common_dreamprvr.py` (on CPU).

Differences from running `python main.py -d cha` by hand, none of which changes a number: `--max-epochs` stops
the epoch loop early (the LR schedule keeps `n_epoch`), early stopping is off unless `--set max_es_cnt=N`,
`num_workers = 0`, `pin_memory = False`, checkpoints go to a temporary folder, logging is silenced. Each epoch
appends `{"epoch", "lr", "hard_negative", "train": {"loss", "diffusion"}, "val": {R@1, R@5, R@10, R@100, SumR},
"seconds"}` to RUN/metrics.jsonl: the format of prvr's runs, so `prvr plot` and bench/train_curve.py read both.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common_dreamprvr import load_original  # noqa: E402
from dreamprvr import charades_cfg  # noqa: E402


def parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, type=Path, help="src/ folder of lijun2005/CVPR26-DreamPRVR")
    ap.add_argument("--data", required=True, type=Path, help="dataset root (ROOT/charades/...)")
    ap.add_argument("--out", required=True, type=Path, help="run folder: metrics.jsonl, config.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-epochs", type=int, default=None, help="stop after so many epochs (schedule unchanged)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="cfg key=value (Python literal)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = load_original(args.original)
    main_mod, utils = m["main"], m["utils"]
    builders = {name: __import__(f"{name}.builder", fromlist=["builder"]) for name in ("Datasets", "Losses", "Validations")}

    work = Path(tempfile.mkdtemp(prefix="dreamprvr-curve-"))
    cfg = charades_cfg(args.original)
    cfg.update(data_root=str(args.data.resolve()), root=str(work), model_root=str(work), ckpt_path=str(work / "ckpt"),
               seed=args.seed, num_workers=0, pin_memory=False, max_es_cnt=-1)
    cfg.update(dict(parse_override(o) for o in args.overrides))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True, default=str) + "\n")
    log_path = args.out / "metrics.jsonl"
    log_path.unlink(missing_ok=True)
    logger = logging.getLogger("dreamprvr-curve")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    try:
        utils.set_seed(cfg["seed"])  # main.main(): seed, then data, model, loss, validation, optimiser
        cfg, train_loader, ctx_loader, query_loader, _, _ = builders["Datasets"].get_datasets(cfg)
        model = m["models_builder"].get_models(cfg)
        criterion = builders["Losses"].get_losses(cfg)
        val_criterion = builders["Validations"].get_validations(cfg)
        optimizer = m["opts_builder"].get_opts(cfg, model, train_loader)
        best_val = [0.0, 0.0, 0.0, 0.0, 0.0]
        es_cnt = 0
        end = cfg["n_epoch"] if args.max_epochs is None else min(cfg["n_epoch"], args.max_epochs)
        for epoch in range(end):
            t0 = time.time()
            loss_avg, dre_avg = main_mod.train_one_epoch(epoch, train_loader, model, criterion, cfg, optimizer)
            with torch.no_grad():
                val, best_val, es = main_mod.val_one_epoch(epoch, ctx_loader, query_loader, model, val_criterion, cfg,
                                                           optimizer, best_val, loss_avg, logger, dre_avg)
            g0 = optimizer.param_groups[0]  # the LR of the next step, as prvr's metrics record it (get_lr() gives
            state = next(optimizer.state[p] for p in g0["params"] if optimizer.state[p])  # 0 for the frozen table)
            lr = g0["lr"] * g0["schedule"].get_lr(state["step"])
            record = {"epoch": epoch, "lr": lr, "hard_negative": bool(criterion.cfg["use_hard_negative"]),
                      "train": {"loss": loss_avg, "diffusion": dre_avg},
                      "val": dict(zip(("R@1", "R@5", "R@10", "R@100", "SumR"), map(float, val[:5]), strict=True)),
                      "seconds": round(time.time() - t0, 2)}
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(f"epoch {epoch}: loss {loss_avg:.4f} val SumR {val[4]:.1f}", flush=True)
            es_cnt = 0 if not es else es_cnt + 1
            if cfg["max_es_cnt"] != -1 and es_cnt > cfg["max_es_cnt"]:
                print("early stop", flush=True)
                break
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
