"""prvr train · prvr eval · prvr convert-checkpoint · prvr models · prvr presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prvr.cli.common import Device, Feature, Quiet, Split, app, console, join_ranks
from prvr.config import parse_set
from prvr.errors import PrvrError

ModelName = Annotated[str | None, typer.Option("--model", "-m", help="registered model (see `prvr models`); default dreamprvr")]


@app.command()
def train(preset: Annotated[str | None, typer.Option(help="dataset preset of the model: activitynet | charades | tvr")] = None,
          model: ModelName = None,
          data: Annotated[Path | None, typer.Option(help="dataset root")] = None,
          out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/prvr"),
          config: Annotated[Path | None, typer.Option(help="YAML file overriding the preset")] = None,
          set_: Annotated[list[str] | None, typer.Option("--set", help="section.key=value, repeatable")] = None,
          epochs: Annotated[int | None, typer.Option(min=1, max=100_000, help="shortcut for --set train.epochs=N")] = None,
          seed: Annotated[int | None, typer.Option(min=0, max=2**32 - 1, help="shortcut for --set train.seed=N")] = None,
          resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint, with its "
                                                     "saved config (--set, --epochs, --data change it)")] = False,
          overwrite: Annotated[bool, typer.Option(help="start over when --out holds a run (its files are replaced)")] = False,
          skip_bad: Annotated[bool, typer.Option(help="leave out empty, wrong-width or NaN/Inf videos and captions "
                                                       "(each with a warning) instead of stopping")] = False,
          device: Device = "auto", quiet: Quiet = False,
          amp: Annotated[bool, typer.Option(help="shortcut for --set train.amp=true (bf16 autocast)")] = False,
          nproc: Annotated[int, typer.Option(min=1, max=1024, help="train on N processes of this machine "
                                             "(DistributedDataParallel, started with torchrun --standalone; "
                                             "train.batch_videos stays the global batch)")] = 1):
    """Train a model with the original optimisation; best/last checkpoints and metrics.jsonl in --out.
    Under `torchrun --nproc-per-node N -m prvr train ...` (or with --nproc N) it trains data-parallel."""
    if nproc > 1:
        _relaunch(nproc)
    from prvr.device import resolve_device
    from prvr.eval.report import metrics_table
    from prvr.models.presets import resolve
    from prvr.train.loop import train as run_train
    from prvr.train.rundir import resume_config

    overrides = [parse_set(s) for s in set_ or []]  # typed shortcuts below are set as values, not re-parsed text
    overrides += [(k, v) for k, v in (("train.epochs", epochs), ("train.seed", seed)) if v is not None]
    if data is not None:
        overrides.append(("data.root", str(data.expanduser().absolute())))
    if amp:
        overrides.append(("train.amp", True))
    dev = join_ranks(resolve_device(device))
    if resume:
        if preset or model:
            raise PrvrError("--resume continues the run's saved config: drop --preset/--model (change single "
                            "values with --set, --epochs or --data)")
        if not (out / "last.safetensors").exists():
            raise PrvrError(f"{out / 'last.safetensors'}: nothing to resume (no last checkpoint in {out})")
        cfg = resume_config(out, config, overrides)
    else:
        cfg = resolve(model, preset, config, overrides)
    res = run_train(cfg, out, dev, resume=resume, progress=not quiet, overwrite=overwrite, skip_bad=skip_bad,
                    log=lambda msg: console.print(msg, markup=False, highlight=False, soft_wrap=True))
    if res.best_metrics:
        console.print(metrics_table({f"best (epoch {res.best_epoch})": res.best_metrics}))
    console.print(f"checkpoints in {res.out_dir}")


def _relaunch(nproc: int) -> None:
    """`prvr train ... --nproc N`: the same command on N local processes through torchrun, launched here so that
    a failing rank ends it with that rank's one-line error and exit code, not the launcher's traceback."""
    import logging
    import os
    import sys
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from prvr.cli.errors import RANK_ERRORS, other_rank_errors

    if "RANK" in os.environ:
        raise PrvrError("--nproc: already running under torchrun (drop --nproc, torchrun sets the processes)")
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    launch = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "prvr", *args])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its traceback and warnings
    with tempfile.TemporaryDirectory(prefix="prvr-ranks-") as errors:
        os.environ[RANK_ERRORS] = errors  # the ranks' one-line errors, for the lines rank 0 did not print
        try:
            run(launch)
        except ChildFailedError as e:
            for line in other_rank_errors(errors):
                print(line, file=sys.stderr)
            code = e.get_first_failure()[1].exitcode
            raise typer.Exit(code if code > 0 else 1) from None
        finally:
            os.environ.pop(RANK_ERRORS, None)
    raise typer.Exit(0)


@app.command("eval")
def evaluate_cmd(checkpoint: Annotated[Path, typer.Option(help="prvr checkpoint (.safetensors)")],
                 data: Annotated[Path, typer.Option(help="dataset root")],
                 split: Annotated[Split, typer.Option(help="caption split to evaluate")] = Split.test,
                 collection: Annotated[str | None, typer.Option(help="default: from the checkpoint")] = None,
                 feature: Feature = None,
                 save_scores: Annotated[Path | None, typer.Option(help="write the (queries x videos) matrix (.npy)")] = None,
                 json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics as JSON")] = None,
                 skip_bad: Annotated[bool, typer.Option(help="leave out empty, wrong-width or NaN/Inf videos and "
                                                              "captions (each with a warning) instead of stopping")] = False,
                 device: Device = "auto", quiet: Quiet = False,
                 amp: Annotated[bool, typer.Option(help="encode under bf16 autocast (faster, not bit-faithful)")] = False):
    """Evaluate a checkpoint on a split: R@1/5/10/100 and SumR, the original protocol."""
    import sys

    from prvr.data.datasets import SplitIndex, check_dims, screen_split
    from prvr.data.layout import DatasetLayout
    from prvr.device import resolve_device
    from prvr.eval.evaluator import evaluate
    from prvr.eval.evaluator import save_scores as write_scores
    from prvr.eval.report import metrics_table
    from prvr.io import check_writable, write_json_atomic
    from prvr.models.checkpoint import load_checkpoint

    split = split.value
    for path, what in ((save_scores, "--save-scores"), (json_out, "--json")):
        if path is not None:  # before the evaluation, not after it
            check_writable(path, what)
    dev = join_ranks(resolve_device(device))
    model, cfg, _ = load_checkpoint(checkpoint, dev)
    layout = DatasetLayout(data, collection or cfg.data.collection, feature or cfg.data.visual_feature)
    if not layout.caption_file(split).exists():
        raise PrvrError(f"{layout.caption_file(split)}: caption file for split {split!r} not found")
    index = SplitIndex.from_layout(layout, split)
    check_dims(layout, index, cfg.model.visual_dim, cfg.model.text_dim, f"checkpoint {checkpoint}")
    if skip_bad:
        index = screen_split(layout, index, cfg.model.visual_dim, cfg.model.text_dim, True,
                             lambda m: print(m, file=sys.stderr))
    res = evaluate(model, layout, split, cfg.train.eval_context_bsz, cfg.train.eval_query_bsz, dev,
                   keep_scores=save_scores is not None, progress=not quiet, amp=amp, index=index)
    console.print(metrics_table({f"{layout.collection} {split}": res.metrics},
                                f"{len(res.query_ids)} queries x {len(res.video_ids)} videos"))
    from prvr import dist

    if save_scores is not None and dist.is_main():
        write_scores(save_scores, res.scores)
        console.print(f"scores written to {save_scores} (rows: caption-file order, columns: first appearance)")
    if json_out is not None and dist.is_main():
        write_json_atomic(json_out, {"checkpoint": str(checkpoint.absolute()), "split": split,
                                     "collection": layout.collection, "model": cfg.model_name,
                                     "n_queries": len(res.query_ids), "n_videos": len(res.video_ids), **res.metrics})


@app.command("convert-checkpoint")
def convert_checkpoint(src: Annotated[Path, typer.Argument(help="authors' checkpoint (torch file, loaded weights-only)")],
                       out: Annotated[Path, typer.Argument(help="output prvr checkpoint (.safetensors)")],
                       model: ModelName = None):
    """Import a checkpoint of the authors' release of a model into a prvr checkpoint."""
    from prvr.models.checkpoint import import_original_checkpoint
    from prvr.models.registry import DEFAULT_MODEL

    cfg = import_original_checkpoint(src, out, model or DEFAULT_MODEL)
    console.print(f"wrote {out} ({cfg.model_name}, {cfg.data.collection})")


@app.command()
def models():
    """List the registered models and their dataset presets."""
    from rich.table import Table

    from prvr.models import get_entry, model_names

    t = Table(title="models (prvr train --model NAME --preset DATASET)")
    for col in ("model", "presets", "authors' checkpoints", "what it is"):
        t.add_column(col)
    for name in model_names():
        e = get_entry(name)
        t.add_row(name, ", ".join(e.preset_names()), "yes" if e.original_state else "no", e.summary)
    console.print(t)


@app.command()
def presets(model: ModelName = None):
    """List a model's training presets and the synthetic data presets."""
    from prvr.models.presets import preset_names
    from prvr.models.registry import DEFAULT_MODEL
    from prvr.synth.synthetic import PRESETS

    console.print(f"training presets of {model or DEFAULT_MODEL}: " + ", ".join(preset_names(model or DEFAULT_MODEL)))
    console.print("synthetic presets: " + ", ".join([*PRESETS, "everyday"]))


@app.command()
def plot(runs: Annotated[list[str], typer.Argument(help="run folders (RUN/metrics.jsonl), or LABEL=RUN1,RUN2,... to "
                                                        "draw several runs (seeds) as their mean and ±1 sd band")],
         out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("curves.png"),
         title: Annotated[str | None, typer.Option(help="figure title")] = None):
    """Plot training curves: mean training loss and validation SumR per epoch of one or several runs, on one PNG."""
    from prvr.train.curves import parse_groups, plot_curves

    groups = parse_groups(runs)
    plot_curves(groups, out, title)
    for g in groups:
        console.print(f"{g.label}: {len(g.curves)} run(s), {g.epochs} epochs, last SumR {g.mean('sumr')[-1]:.1f}")
    console.print(f"wrote {out}")


@app.command()
def compare(data: Annotated[Path, typer.Option(help="dataset root")],
            collection: Annotated[str, typer.Option("--collection", "-c", help="collection under the root")],
            models: Annotated[str, typer.Option(help="comma-separated registered models")] = "hlformer,dreamprvr,holmes",
            preset: Annotated[str | None, typer.Option(help="the models' dataset preset (default: the collection's name)")] = None,
            epochs: Annotated[int | None, typer.Option(min=1, max=100_000, help="shortcut for --set train.epochs=N")] = None,
            set_: Annotated[list[str] | None, typer.Option("--set", help="section.key=value for every model, repeatable")] = None,
            out: Annotated[Path, typer.Option(help="folder of the runs (OUT/<model>, each with its test-split index)")] = Path("runs/compare"),
            json_out: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON")] = None,
            overwrite: Annotated[bool, typer.Option(help="train again where OUT/<model> holds a run")] = False,
            device: Device = "auto"):
    """Train each model with its preset on one dataset, then one table: test R@1/5/10/100 and SumR, parameters,
    seconds per training epoch, evaluation seconds, index bytes per video. Curves: `prvr plot OUT/<model> ...`."""
    from prvr.device import resolve_device
    from prvr.io import check_writable, write_json_atomic
    from prvr.train.compare import compare as run_compare
    from prvr.train.compare import comparison_table, parse_models

    names = parse_models(models)
    overrides = [parse_set(s) for s in set_ or []]
    if epochs is not None:
        overrides.append(("train.epochs", epochs))
    if json_out is not None:
        check_writable(json_out, "--json")
    rows = run_compare(names, data, collection, out, preset, resolve_device(device), overrides, overwrite,
                       log=lambda msg: console.print(msg, markup=False, highlight=False, soft_wrap=True))
    table = comparison_table(rows, f"{collection} test split ({', '.join(r.model for r in rows)})")
    from rich.console import Console

    Console(width=max(console.width, 130)).print(table)  # whole numbers, never "230,3…" on a narrow terminal
    if json_out is not None:
        write_json_atomic(json_out, {"data": str(data.expanduser().absolute()), "collection": collection,
                                     "overrides": set_ or [], "device": str(resolve_device(device)),
                                     "models": [r.to_dict() for r in rows]})
        console.print(f"written: {json_out}")
