"""prvr extract · prvr serve: your own videos."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from prvr.cli.common import Collection, Device, Feature, Root, Split, app, console


@app.command()
def extract(videos: Annotated[Path, typer.Argument(help="folder of video files")], root: Root,
            collection: Collection, frame_encoder: Annotated[str, typer.Option(
                help="hf:ID_OR_DIR (a vision or image-text checkpoint), efficientnet-lite0, or concepts")],
            text_encoder: Annotated[str | None, typer.Option(
                help="hf:ID_OR_DIR (a text checkpoint + tokenizer, or an image-text one), minilm, or concepts")] = None,
            captions: Annotated[Path | None, typer.Option(help="'<video_id> text' or '<video_id>#enc#<n> text' per line")] = None,
            split: Annotated[Split, typer.Option(help="split the captions belong to")] = Split.test,
            fps: Annotated[float, typer.Option(min=0.01, max=1000.0, help="frames sampled per second")] = 1.0,
            feature: Feature = None, device: Device = "cpu",
            quiet: Annotated[bool, typer.Option(help="no progress bar")] = False):
    """Decode videos (PyAV), encode frames and captions, write the standard layout. Bad files are reported."""
    from prvr.device import resolve_device
    from prvr.encode.extract import extract as run_extract

    rep = run_extract(videos, root, collection, frame_encoder, text_encoder, captions, split.value, fps, feature,
                      resolve_device(device), progress=not quiet)
    console.print(f"{rep.layout.base}: {len(rep.videos)} videos, {rep.n_captions} captions")
    for f in rep.failures:
        print(f, file=sys.stderr)
    if rep.failures:
        print(f"{len(rep.failures)} problem(s); the other videos were extracted", file=sys.stderr)
        raise typer.Exit(2)


@app.command()
def serve(index: Annotated[Path, typer.Argument(help="index directory")],
          host: Annotated[str, typer.Option(help="address to bind (beyond loopback, set --token)")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535, help="port")] = 8000,
          media_root: Annotated[list[Path] | None, typer.Option(
              "--media-root", help="folder whose video files may be sent (repeatable; the folders recorded in the "
                                   "index when its videos were extracted count too)")] = None,
          allowed_host: Annotated[list[str] | None, typer.Option(
              "--allowed-host", help="another Host name clients may use, e.g. a DNS name of this machine "
                                     "(repeatable; '*': any)")] = None,
          token: Annotated[str | None, typer.Option(envvar="PRVR_TOKEN", show_envvar=True,
                                                    help="require this token from clients (Authorization: Bearer, "
                                                         "or /?token= once in a browser); >= 16 characters")] = None,
          threads: Annotated[int | None, typer.Option(min=1, max=256, help="torch threads of the search worker "
                                                                            "(default: min(4, CPU cores))")] = None,
          max_batch: Annotated[int, typer.Option(min=1, max=1024, help="concurrent queries scored together")] = 32,
          max_pending: Annotated[int, typer.Option(min=1, max=100_000, help="queries waiting before the server "
                                                                            "answers 503")] = 256,
          device: Device = "cpu"):
    """HTTP API (GET /search, /videos/{id}, /health; OpenAPI docs at /docs) and a search page at /."""
    from prvr.device import resolve_device
    from prvr.errors import PrvrError
    from prvr.index.search import Retriever
    from prvr.serve.app import LOOPBACK_NAMES, MIN_TOKEN_CHARS, ServeSettings, default_allowed_hosts
    from prvr.serve.app import serve as run_server

    for root in media_root or []:
        if not root.is_dir():
            raise PrvrError(f"--media-root {root}: not a directory")
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise PrvrError(f"--token: {len(token)} characters, expected at least {MIN_TOKEN_CHARS} (e.g. "
                        "python -c 'import secrets; print(secrets.token_urlsafe())')")
    settings = ServeSettings(host=host, allowed_hosts=list(allowed_host or []), media_roots=list(media_root or []),
                             token=token, max_batch=max_batch, max_pending=max_pending)
    if threads:
        settings.threads = threads
    retriever = Retriever(index, resolve_device(device))  # a missing or corrupt index fails here, in one line
    if default_allowed_hosts(host) != list(LOOPBACK_NAMES) and token is None:
        print(f"warning: serving on {host} beyond loopback without --token: anyone who can reach port {port} can "
              "search the index and fetch its videos", file=sys.stderr)
    roots = [*settings.media_roots, *retriever.manifest.get("media_roots", [])]
    console.print(f"serving {index} ({len(retriever)} videos) on http://{host}:{port}/ (API docs at /docs); "
                  f"video files from: {', '.join(map(str, roots)) or 'nowhere (no --media-root)'}",
                  markup=False, highlight=False)
    run_server(retriever, host, port, settings=settings)


@app.command()
def ingest(videos: Annotated[Path, typer.Argument(help="folder of video files (walked recursively)")],
           index: Annotated[Path, typer.Argument(help="index directory (created, or extended)")],
           encoder: Annotated[str, typer.Option(help="concepts (offline default: EfficientNet-Lite0 ImageNet classes "
                                                     "+ MiniLM), or hf:ID_OR_DIR of an image-text checkpoint "
                                                     "(CLIPModel, SiglipModel, ...)")] = "concepts",
           fps: Annotated[float, typer.Option(min=0.01, max=1000.0, help="frames sampled per second")] = 1.0,
           workers: Annotated[int | None, typer.Option(min=1, max=256, help="decoding processes (default: half "
                                                                              "the CPU cores)")] = None,
           prune: Annotated[bool, typer.Option(help="remove indexed videos whose files are gone")] = False,
           bf16: Annotated[bool, typer.Option(help="run the frame encoder's feed-forward blocks in bf16 "
                                                   "(hf: transformer towers; see README for the measured agreement "
                                                   "with fp32)")] = False,
           commit_every: Annotated[int, typer.Option(min=1, max=100_000, help="videos per shard (a killed run "
                                                                                "resumes from the last shard)")] = 16,
           device: Device = "cpu", quiet: Annotated[bool, typer.Option(help="no progress bar")] = False):
    """Index a folder of videos for text search, with no captions and no training (resumable, incremental)."""
    from prvr.device import resolve_device
    from prvr.index.ingest import ingest as run_ingest

    rep = run_ingest(videos, index, encoder, fps, workers, "bf16" if bf16 else "fp32", prune,
                     resolve_device(device), progress=not quiet, commit_videos=commit_every)
    print(f"{index}: {rep.n_videos} videos; added {len(rep.added)} ({rep.frames} frames in "
                  f"{rep.seconds:.1f} s: {rep.frames_per_second:.1f} frames/s, {rep.videos_per_minute:.1f} "
                  f"videos/min), {rep.unchanged} unchanged, {len(rep.removed)} removed")
    if rep.gone:
        print(f"{len(rep.gone)} indexed video(s) whose files are gone (pass --prune to remove them): "
              f"{', '.join(rep.gone[:10])}", file=sys.stderr)
    if rep.failures:
        print(f"{len(rep.failures)} file(s) could not be indexed (the others were):", file=sys.stderr)
        for f in rep.failures:
            print(f"  {f}", file=sys.stderr)
        raise typer.Exit(2)
    print(f"search it: prvr search {index} \"a dog on a beach\"   or serve it: prvr serve {index}")
