"""prvr extract · prvr serve: your own videos."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from prvr.cli.common import Collection, Device, Feature, Root, app, console


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
