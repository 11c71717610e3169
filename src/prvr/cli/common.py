"""What the sub-commands share: the typer apps, the console, common options."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Partially relevant video retrieval: DreamPRVR and its family, faithful and fast.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Check and convert datasets in the standard PRVR release layout.", no_args_is_help=True)
index_app = typer.Typer(help="Build and extend an on-disk index of video tokens.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
console = Console(stderr=False)

Root = Annotated[Path, typer.Argument(help="dataset root (holds <collection>/TextData and FeatureData)")]
Collection = Annotated[str, typer.Option("--collection", "-c", help="activitynet | charades | tvr | your own name")]
Feature = Annotated[str | None, typer.Option("--feature", help="visual feature folder (default per collection)")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps")]
Quiet = Annotated[bool, typer.Option(help="no progress bars")]


class Split(str, Enum):
    """A caption split of the release layout."""

    train = "train"
    val = "val"
    test = "test"


class IndexSplit(str, Enum):
    """The videos to index: those of a caption split, or every video with features."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


def join_ranks(device):
    """Under torchrun: join the process group (gloo on CPU, nccl on CUDA) and return this rank's device; only
    rank 0 prints. A single process: `device` unchanged."""
    from prvr import dist

    dist.init_from_env(device)
    if not dist.is_main():
        console.quiet = True
    return dist.local_device(device)
