"""`prvr`: one entry point, one sub-command per job. User errors print one line and exit with code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prvr.errors import PrvrError

app = typer.Typer(help="Partially relevant video retrieval: DreamPRVR, faithful and fast.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Check and convert datasets in the standard PRVR release layout.", no_args_is_help=True)
app.add_typer(data_app, name="data")
index_app = typer.Typer(help="Build and extend an on-disk index of video tokens.", no_args_is_help=True)
app.add_typer(index_app, name="index")
console = Console(stderr=False)

Root = Annotated[Path, typer.Argument(help="dataset root (holds <collection>/TextData and FeatureData)")]
Collection = Annotated[str, typer.Option("--collection", "-c", help="activitynet | charades | tvr | your own name")]
Feature = Annotated[str | None, typer.Option("--feature", help="visual feature folder (default per collection)")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps")]


def metrics_table(rows: dict[str, dict[str, float]], title: str = "") -> Table:
    t = Table(title=title or None)
    t.add_column("")
    for k in ("R@1", "R@5", "R@10", "R@100", "SumR"):
        t.add_column(k, justify="right")
    for name, m in rows.items():
        t.add_row(name, *(f"{m[k]:.1f}" for k in ("R@1", "R@5", "R@10", "R@100", "SumR")))
    return t


@app.command()
def synth(root: Root, preset: Annotated[str, typer.Option(help="tiny | charades-small | charades | tvr-small | everyday | ...")] = "charades-small",
          seed: Annotated[int | None, typer.Option(help="override the preset's seed")] = None,
          bigfile: Annotated[bool, typer.Option(help="also write the BigFile form")] = False,
          scale: Annotated[float, typer.Option(help="multiply the number of videos per split")] = 1.0):
    """Write a deterministic synthetic dataset in the standard layout (ROOT/<collection>/...)."""
    from prvr.data.synth import write_synthetic

    layout = write_synthetic(root, preset, seed=seed, bigfile=bigfile, scale=scale)
    console.print(f"wrote {layout.base} (collection {layout.collection}, feature {layout.visual_feature})")


@data_app.command("check")
def data_check(root: Root, collection: Collection, feature: Feature = None):
    """Validate a dataset: features for every caption, dims, NaN/Inf, empty videos. Exit 2 on any problem."""
    from prvr.data.check import check_dataset
    from prvr.data.layout import DatasetLayout

    rep = check_dataset(DatasetLayout(root, collection, feature))
    for split, c in rep.counts.items():
        console.print(f"{split}: {c['videos']} videos, {c['queries']} queries")
    if rep.visual_dim:
        console.print(f"visual dim {rep.visual_dim}, text dim {rep.text_dim}")
    for p in rep.problems:
        print(p, file=sys.stderr)
    if not rep.ok:
        print(f"{len(rep.problems)} problem(s) found", file=sys.stderr)
        raise typer.Exit(2)
    console.print("ok")


@data_app.command("convert")
def data_convert(root: Root, collection: Collection, feature: Feature = None,
                 out: Annotated[Path | None, typer.Option(help="output file (default FeatureData/<f>/feature.hdf5)")] = None):
    """Convert a BigFile (feature.bin, id.txt, shape.txt) into feature.hdf5, streaming and atomically."""
    from prvr.data.features import convert_bigfile
    from prvr.data.layout import DatasetLayout

    path = convert_bigfile(DatasetLayout(root, collection, feature), out)
    console.print(f"wrote {path}")


@app.command()
def train(preset: Annotated[str | None, typer.Option(help="activitynet | charades | tvr (see `prvr presets`)")] = None,
          data: Annotated[Path | None, typer.Option(help="dataset root")] = None,
          out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/prvr"),
          config: Annotated[Path | None, typer.Option(help="YAML file overriding the preset")] = None,
          set_: Annotated[list[str] | None, typer.Option("--set", help="section.key=value, repeatable")] = None,
          epochs: Annotated[int | None, typer.Option(help="shortcut for --set train.epochs=N")] = None,
          seed: Annotated[int | None, typer.Option(help="shortcut for --set train.seed=N")] = None,
          resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
          device: Device = "auto", quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
          amp: Annotated[bool, typer.Option(help="shortcut for --set train.amp=true (bf16 autocast)")] = False):
    """Train a model with the original optimisation; best/last checkpoints and metrics.jsonl in --out."""
    from prvr.config import load_yaml, resolve
    from prvr.device import resolve_device
    from prvr.train.loop import train as run_train

    overrides = list(set_ or [])
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if data is not None:
        overrides.append(f"data.root={data}")
    if amp:
        overrides.append("train.amp=true")
    if resume and (out / "config.yaml").exists() and not (preset or config or set_ or amp):
        cfg = load_yaml(out / "config.yaml")  # the run's own resolved config
    else:
        cfg = resolve(preset, str(config) if config else None, overrides)
    res = run_train(cfg, out, resolve_device(device), resume=resume, progress=not quiet)
    if res.best_metrics:
        console.print(metrics_table({f"best (epoch {res.best_epoch})": res.best_metrics}))
    console.print(f"checkpoints in {res.out_dir}")


@app.command("eval")
def evaluate_cmd(checkpoint: Annotated[Path, typer.Option(help="prvr checkpoint (.safetensors)")],
                 data: Annotated[Path, typer.Option(help="dataset root")],
                 split: Annotated[str, typer.Option(help="val | test | train")] = "test",
                 collection: Annotated[str | None, typer.Option(help="default: from the checkpoint")] = None,
                 feature: Feature = None,
                 save_scores: Annotated[Path | None, typer.Option(help="write the (queries x videos) matrix (.npy)")] = None,
                 json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics as JSON")] = None,
                 device: Device = "auto", quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
                 amp: Annotated[bool, typer.Option(help="encode under bf16 autocast (faster, not bit-faithful)")] = False):
    """Evaluate a checkpoint on a split: R@1/5/10/100 and SumR, the original protocol."""
    from prvr.data.layout import DatasetLayout
    from prvr.device import resolve_device
    from prvr.eval.evaluator import evaluate
    from prvr.eval.evaluator import save_scores as write_scores
    from prvr.io import write_json_atomic
    from prvr.train.checkpoint import load_checkpoint

    dev = resolve_device(device)
    model, cfg, _ = load_checkpoint(checkpoint, dev)
    layout = DatasetLayout(data, collection or cfg.data.collection, feature or cfg.data.visual_feature)
    if not layout.caption_file(split).exists():
        raise PrvrError(f"{layout.caption_file(split)}: caption file for split {split!r} not found")
    res = evaluate(model, layout, split, cfg.train.eval_context_bsz, cfg.train.eval_query_bsz, dev,
                   keep_scores=save_scores is not None, progress=not quiet, amp=amp)
    console.print(metrics_table({f"{layout.collection} {split}": res.metrics},
                                f"{len(res.query_ids)} queries x {len(res.video_ids)} videos"))
    if save_scores is not None:
        write_scores(save_scores, res.scores)
        console.print(f"scores written to {save_scores} (rows: caption-file order, columns: first appearance)")
    if json_out is not None:
        write_json_atomic(json_out, {"checkpoint": str(checkpoint), "split": split, "collection": layout.collection,
                                     "n_queries": len(res.query_ids), "n_videos": len(res.video_ids), **res.metrics})


@app.command("convert-checkpoint")
def convert_checkpoint(src: Annotated[Path, typer.Argument(help="authors' checkpoint (torch file, loaded weights-only)")],
                       out: Annotated[Path, typer.Argument(help="output prvr checkpoint (.safetensors)")]):
    """Import a checkpoint of the original DreamPRVR release into a prvr checkpoint."""
    from prvr.models.import_original import import_original_checkpoint

    cfg = import_original_checkpoint(src, out)
    console.print(f"wrote {out} ({cfg.data.collection}, {cfg.model.num_registers} registers)")


def _index_cmd(checkpoint: Path, data: Path, out: Path, split: str, collection: str | None, feature: str | None,
               device: str, quiet: bool, adding: bool) -> None:
    from prvr.data.layout import DatasetLayout
    from prvr.device import resolve_device
    from prvr.index.build import build_index
    from prvr.train.checkpoint import load_config

    if adding and not (out / "manifest.json").exists():
        raise PrvrError(f"{out}: no index to add to (build it with `prvr index build`)")
    cfg = load_config(checkpoint)
    layout = DatasetLayout(data, collection or cfg.data.collection, feature or cfg.data.visual_feature)
    if split != "all" and not layout.caption_file(split).exists():
        raise PrvrError(f"{layout.caption_file(split)}: caption file for split {split!r} not found")
    m = build_index(checkpoint, layout, split, out, resolve_device(device), progress=not quiet)
    console.print(f"{out}: {m['n_videos']} videos in {len(m['shards'])} shard(s)")


IndexOut = Annotated[Path, typer.Option(help="index directory")]


@index_app.command("build")
def index_build(checkpoint: Annotated[Path, typer.Option(help="prvr checkpoint (.safetensors)")],
                data: Annotated[Path, typer.Option(help="dataset root")], out: IndexOut,
                split: Annotated[str, typer.Option(help="caption split whose videos are indexed, or all")] = "test",
                collection: Annotated[str | None, typer.Option(help="default: from the checkpoint")] = None,
                feature: Feature = None, device: Device = "auto",
                quiet: Annotated[bool, typer.Option(help="no progress bar")] = False):
    """Encode every video of a split once and store its tokens (float16, memory-mapped). Re-running resumes."""
    _index_cmd(checkpoint, data, out, split, collection, feature, device, quiet, adding=False)


@index_app.command("add")
def index_add(checkpoint: Annotated[Path, typer.Option(help="the checkpoint the index was built with")],
              data: Annotated[Path, typer.Option(help="dataset root")], out: IndexOut,
              split: Annotated[str, typer.Option(help="caption split whose videos are added")] = "test",
              collection: Annotated[str | None, typer.Option(help="default: from the checkpoint")] = None,
              feature: Feature = None, device: Device = "auto",
              quiet: Annotated[bool, typer.Option(help="no progress bar")] = False):
    """Append the videos of another split or dataset to an existing index (ids already present are skipped)."""
    _index_cmd(checkpoint, data, out, split, collection, feature, device, quiet, adding=True)


@index_app.command("ann")
def index_ann(index: Annotated[Path, typer.Argument(help="index directory")],
              nlist: Annotated[int | None, typer.Option(help="inverted lists (default ~4 sqrt(tokens))")] = None):
    """Build the approximate stage over clip tokens (FAISS) for large collections; search then re-ranks exactly."""
    from prvr.index.ann import build_ann

    meta = build_ann(index, nlist)
    console.print(f"{index}: ANN over {meta['n_videos']} videos ({meta['nlist']} lists)")


@app.command()
def search(index: Annotated[Path, typer.Argument(help="index directory")],
           text: Annotated[str | None, typer.Argument(help="free-text query (needs an index with a text encoder)")] = None,
           query_id: Annotated[str | None, typer.Option("--query-id", help="search with this caption's precomputed features")] = None,
           data: Annotated[Path | None, typer.Option(help="dataset root holding that caption's features")] = None,
           top_k: Annotated[int, typer.Option("--top-k", "-k", help="number of results")] = 10,
           json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
           exact: Annotated[bool, typer.Option(help="score every video even when an ANN stage exists")] = False,
           device: Device = "cpu"):
    """Rank the indexed videos for a query; each hit shows its best moment."""
    import json as _json

    from prvr.device import resolve_device
    from prvr.index.search import Retriever

    if (text is None) == (query_id is None):
        raise PrvrError("give either a free-text query or --query-id (with --data)")
    if query_id is not None and data is None:
        raise PrvrError("--query-id needs --data ROOT (the dataset holding its features)")
    retriever = Retriever(index, resolve_device(device))
    tokens = retriever.encode_text(text) if text is not None else retriever.query_features(data, query_id)
    hits = retriever.search_tokens(tokens, top_k, exact=exact or None)
    if json_out:
        print(_json.dumps([h.to_dict() for h in hits], indent=2))
        return
    t = Table(title=f"{text or query_id} in {index}")
    for col in ("rank", "video", "score", "moment (s)", "best frame (s)"):
        t.add_column(col)
    for r, h in enumerate(hits, 1):
        moment = f"{h.start:.1f}-{h.end:.1f}" if h.start is not None else f"frames {h.frames[0]}-{h.frames[1]}"
        t.add_row(str(r), h.video_id, f"{h.score:.4f}", moment, "" if h.frame_time is None else f"{h.frame_time:.1f}")
    console.print(t)


@app.command()
def extract(videos: Annotated[Path, typer.Argument(help="folder of video files")], root: Root,
            collection: Collection, frame_encoder: Annotated[str, typer.Option(help="hf:DIR, a local vision checkpoint")],
            text_encoder: Annotated[str | None, typer.Option(help="hf:DIR, a local text checkpoint + tokenizer")] = None,
            captions: Annotated[Path | None, typer.Option(help="'<video_id> text' or '<video_id>#enc#<n> text' per line")] = None,
            split: Annotated[str, typer.Option(help="split the captions belong to")] = "test",
            fps: Annotated[float, typer.Option(help="frames sampled per second")] = 1.0,
            feature: Feature = None, device: Device = "cpu",
            quiet: Annotated[bool, typer.Option(help="no progress bar")] = False):
    """Decode videos (PyAV), encode frames and captions, write the standard layout. Bad files are reported."""
    from prvr.device import resolve_device
    from prvr.encode.extract import extract as run_extract

    rep = run_extract(videos, root, collection, frame_encoder, text_encoder, captions, split, fps, feature,
                      resolve_device(device), progress=not quiet)
    console.print(f"{rep.layout.base}: {len(rep.videos)} videos, {rep.n_captions} captions")
    for f in rep.failures:
        print(f, file=sys.stderr)
    if rep.failures:
        print(f"{len(rep.failures)} problem(s); the other videos were extracted", file=sys.stderr)
        raise typer.Exit(2)


@app.command()
def serve(index: Annotated[Path, typer.Argument(help="index directory")],
          host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port")] = 8000, device: Device = "cpu"):
    """HTTP API (GET /search, /videos/{id}, /health; OpenAPI docs at /docs) and a search page at /."""
    from prvr.device import resolve_device
    from prvr.index.search import Retriever
    from prvr.serve.app import serve as run_server

    retriever = Retriever(index, resolve_device(device))  # a missing or corrupt index fails here, in one line
    console.print(f"serving {index} ({len(retriever)} videos) on http://{host}:{port}/ (API docs at /docs)")
    run_server(retriever, host, port)


@app.command()
def presets():
    """List the training presets and the synthetic data presets."""
    from prvr.config import preset_names
    from prvr.data.synth import PRESETS

    console.print("training presets: " + ", ".join(preset_names()))
    console.print("synthetic presets: " + ", ".join([*PRESETS, "everyday"]))


def main() -> None:
    from prvr.runtime import tune_allocator

    tune_allocator()
    try:
        app()
    except PrvrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

__all__ = ["app", "main"]
