"""prvr index build · prvr index add · prvr index ann · prvr search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prvr.cli.common import Device, Feature, IndexSplit, app, console, index_app, join_ranks
from prvr.errors import PrvrError

MAX_K = 1000  # prvr.index.search.MAX_K (not imported here: the CLI starts without torch)

IndexOut = Annotated[Path, typer.Option(help="index directory")]
Checkpoint = Annotated[Path, typer.Option(help="prvr checkpoint (.safetensors)")]
Data = Annotated[Path, typer.Option(help="dataset root")]
CollectionOpt = Annotated[str | None, typer.Option(help="default: from the checkpoint")]
QuietBar = Annotated[bool, typer.Option(help="no progress bar")]


SkipBad = Annotated[bool, typer.Option(help="leave out empty, wrong-width or NaN/Inf videos (each with a warning) "
                                              "instead of stopping")]
MediaRoot = Annotated[list[Path] | None, typer.Option("--media-root", help="also record this folder of video files "
                                                      "(repeatable); `prvr serve` sends files from under recorded "
                                                      "folders only")]


def _index_cmd(checkpoint: Path, data: Path, out: Path, split: str, collection: str | None, feature: str | None,
               device: str, quiet: bool, adding: bool, skip_bad: bool, media_roots: list[Path] | None) -> None:
    import sys

    from prvr.data.layout import DatasetLayout
    from prvr.device import resolve_device
    from prvr.index.build import build_index
    from prvr.models.checkpoint import load_config

    if adding and not (out / "manifest.json").exists():
        raise PrvrError(f"{out}: no index to add to (build it with `prvr index build`)")
    for root in media_roots or []:
        if not root.is_dir():
            raise PrvrError(f"--media-root {root}: not a directory")
    cfg = load_config(checkpoint)
    layout = DatasetLayout(data, collection or cfg.data.collection, feature or cfg.data.visual_feature)
    if split != "all" and not layout.caption_file(split).exists():
        raise PrvrError(f"{layout.caption_file(split)}: caption file for split {split!r} not found")
    m = build_index(checkpoint, layout, split, out, join_ranks(resolve_device(device)), progress=not quiet, skip_bad=skip_bad,
                    warn=lambda msg: print(msg, file=sys.stderr), media_roots=[str(r) for r in media_roots or []])
    console.print(f"{out}: {m['n_videos']} videos in {len(m['shards'])} shard(s)")


@index_app.command("build")
def index_build(checkpoint: Checkpoint, data: Data, out: IndexOut,
                split: Annotated[IndexSplit, typer.Option(help="caption split whose videos are indexed, or all")] = IndexSplit.test,
                collection: CollectionOpt = None, feature: Feature = None, device: Device = "auto",
                quiet: QuietBar = False, skip_bad: SkipBad = False, media_root: MediaRoot = None):
    """Encode every video of a split once and store its tokens (float16, memory-mapped). Re-running resumes."""
    _index_cmd(checkpoint, data, out, split.value, collection, feature, device, quiet, False, skip_bad, media_root)


@index_app.command("add")
def index_add(checkpoint: Annotated[Path, typer.Option(help="the checkpoint the index was built with")],
              data: Data, out: IndexOut,
              split: Annotated[IndexSplit, typer.Option(help="caption split whose videos are added, or all")] = IndexSplit.test,
              collection: CollectionOpt = None, feature: Feature = None, device: Device = "auto",
              quiet: QuietBar = False, skip_bad: SkipBad = False, media_root: MediaRoot = None):
    """Append the videos of another split or dataset to an existing index (ids already present are skipped)."""
    _index_cmd(checkpoint, data, out, split.value, collection, feature, device, quiet, True, skip_bad, media_root)


@index_app.command("remove")
def index_remove(index: Annotated[Path, typer.Argument(help="index directory")],
                 video_ids: Annotated[list[str], typer.Argument(help="video ids to remove")]):
    """Remove videos from an index (their shards are rewritten; the index stays consistent if killed)."""
    from prvr.index.store import read_manifest, remove_videos

    manifest = read_manifest(index)
    m, removed = remove_videos(index, manifest, video_ids)
    unknown = [v for v in dict.fromkeys(video_ids) if v not in set(removed)]
    print(f"{index}: removed {len(removed)} video(s); {m['n_videos']} left")
    if unknown:
        raise PrvrError(f"{index}: no such video id(s): {', '.join(map(repr, unknown[:10]))}")


@index_app.command("ann")
def index_ann(index: Annotated[Path, typer.Argument(help="index directory")],
              nlist: Annotated[int | None, typer.Option(min=1, max=65536, help="inverted lists (default ~4 sqrt(tokens))")] = None,
              codes: Annotated[str, typer.Option(help="sq4 (4 bits per dimension, FAISS fast scan: the fastest "
                                                       "search at 100,000 videos), sq8 (8 bits per dimension) or pq4 "
                                                       "(4-bit codes of 4-d pieces, re-scored: the smallest)")] = "sq4",
              lists: Annotated[bool, typer.Option(help="also the per-video lists that make stage 2 one FAISS scan "
                                                       "(the index's token bytes once more on disk)")] = True):
    """Build the approximate stage over every token (FAISS) for large collections; search then re-ranks exactly."""
    from prvr.index.ann import build_ann

    meta = build_ann(index, nlist, codes, lists=lists)
    console.print(f"{index}: ANN over {meta['n_tokens']} tokens of {meta['n_videos']} videos ({meta['nlist']} lists)")


@app.command()
def search(index: Annotated[Path, typer.Argument(help="index directory")],
           text: Annotated[str | None, typer.Argument(help="free-text query (needs an index with a text encoder)")] = None,
           query_id: Annotated[str | None, typer.Option("--query-id", help="search with this caption's precomputed features")] = None,
           data: Annotated[Path | None, typer.Option(help="dataset root holding that caption's features")] = None,
           top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=MAX_K, help="number of results")] = 10,
           json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
           exact: Annotated[bool, typer.Option(help="score every video even when an ANN stage exists")] = False,
           path: Annotated[str | None, typer.Option(help="only videos whose file path contains this")] = None,
           encoder: Annotated[str | None, typer.Option(help="the query encoder you expect (refused when it is not "
                                                            "the index's)")] = None,
           device: Device = "cpu"):
    """Rank the indexed videos for a query; each hit shows its best moment."""
    from rich.table import Table

    from prvr.device import resolve_device
    from prvr.index.search import Retriever

    if (text is None) == (query_id is None):
        raise PrvrError("give either a free-text query or --query-id (with --data)")
    if query_id is not None and data is None:
        raise PrvrError("--query-id needs --data ROOT (the dataset holding its features)")
    retriever = Retriever(index, resolve_device(device))
    if encoder is not None:
        from prvr.encode.encoders import parse_spec

        retriever.check_query_encoder(parse_spec(encoder))
    tokens = retriever.encode_text(text) if text is not None else retriever.query_features(data, query_id)
    hits = retriever.search_tokens(tokens, top_k, exact=exact or None, path=path)
    if json_out:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    t = Table(title=f"{text or query_id} in {index}")
    for col in ("rank", "video", "score", "moment (s)", "best frame (s)"):
        t.add_column(col)
    for r, h in enumerate(hits, 1):
        moment = f"{h.start:.1f}-{h.end:.1f}" if h.start is not None else f"frames {h.frames[0]}-{h.frames[1]}"
        t.add_row(str(r), h.video_id, f"{h.score:.4f}", moment, "" if h.frame_time is None else f"{h.frame_time:.1f}")
    console.print(t)
