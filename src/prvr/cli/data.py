"""prvr synth · prvr data check · prvr data convert."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from prvr.cli.common import Collection, Feature, Root, Split, app, console, data_app


@app.command()
def synth(root: Root, preset: Annotated[str, typer.Option(help="tiny | charades-small | charades | tvr-small | everyday | ...")] = "charades-small",
          seed: Annotated[int | None, typer.Option(min=0, max=2**32 - 1, help="override the preset's seed")] = None,
          bigfile: Annotated[bool, typer.Option(help="also write the BigFile form")] = False,
          scale: Annotated[float, typer.Option(min=0.001, max=1000.0, help="multiply the number of videos per split "
                                                                          "(at least 2 each)")] = 1.0):
    """Write a deterministic synthetic dataset in the standard layout (ROOT/<collection>/...)."""
    from prvr.synth.synthetic import write_synthetic

    layout = write_synthetic(root, preset, seed=seed, bigfile=bigfile, scale=scale)
    console.print(f"wrote {layout.base} (collection {layout.collection}, feature {layout.visual_feature})")


@data_app.command("check")
def data_check(root: Root, collection: Collection, feature: Feature = None,
               split: Annotated[list[Split] | None, typer.Option(help="a split that must be there (repeatable; "
                                                                     "default: train, val and test, as released)")] = None):
    """Validate a dataset: features for every caption, dims, NaN/Inf, empty videos. Exit 2 on any problem."""
    from prvr.data.check import check_dataset
    from prvr.data.layout import DatasetLayout

    expected = [s.value for s in split] if split else ["train", "val", "test"]
    rep = check_dataset(DatasetLayout(root, collection, feature), expected_splits=expected)
    for name, c in rep.counts.items():
        console.print(f"{name}: {c['videos']} videos, {c['queries']} queries")
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
    from prvr.io import check_writable

    layout = DatasetLayout(root, collection, feature)
    check_writable(out or layout.feature_hdf5, "output")
    path = convert_bigfile(layout, out)
    console.print(f"wrote {path}")
