import shutil
import subprocess
import sys

import h5py
import numpy as np

from prvr.data.check import check_dataset
from prvr.data.layout import DatasetLayout
from prvr.synth.synthetic import PRESETS, write_synthetic


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True)


def test_check_clean_dataset(tiny_data):
    rep = check_dataset(DatasetLayout(tiny_data, "charades"))
    assert rep.ok, rep.problems
    assert set(rep.counts) == {"train", "val", "test"}
    assert rep.visual_dim == 48 and rep.text_dim == 40
    r = run_cli("data", "check", tiny_data, "--collection", "charades")
    assert r.returncode == 0, r.stderr
    assert "train:" in r.stdout and "ok" in r.stdout


def test_check_reports_every_problem(tiny_data, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(tiny_data, root)
    layout = DatasetLayout(root, "charades")
    vids = list(dict.fromkeys(line.split("#", 1)[0] for line in layout.caption_file("test").read_text().split("\n") if line))
    with h5py.File(layout.feature_hdf5, "a") as f:
        del f[vids[0]]  # missing video
        data = f[vids[1]][...]
        data[0, 0] = np.nan
        del f[vids[1]]
        f[vids[1]] = data  # NaN
        del f[vids[2]]
        f[vids[2]] = np.zeros((0, 48), np.float32)  # empty
        del f[vids[3]]
        f[vids[3]] = np.zeros((5, 47), np.float32)  # wrong dim
    first_cap = layout.caption_file("val").read_text().split()[0]
    with h5py.File(layout.query_feature_file, "a") as f:
        del f[first_cap]
    r = run_cli("data", "check", root, "--collection", "charades")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    err = r.stderr
    assert f"no features for video {vids[0]!r}" in err
    assert f"video {vids[1]!r} contains NaN" in err
    assert f"video {vids[2]!r} is empty" in err
    assert f"video {vids[3]!r} has dim 47, expected 48" in err
    assert f"no token features for caption {first_cap!r}" in err
    assert "feature.hdf5" in err and "roberta_charades_query_feat.hdf5" in err


def test_check_missing_everything(tmp_path):
    r = run_cli("data", "check", tmp_path, "--collection", "tvr")
    assert r.returncode == 2 and "no caption files" in r.stderr and "Traceback" not in r.stderr


def test_synth_is_deterministic_and_standard(tmp_path):
    a = write_synthetic(tmp_path / "a", "tiny")
    b = write_synthetic(tmp_path / "b", "tiny")
    for split in ("train", "val", "test"):
        assert a.caption_file(split).read_text() == b.caption_file(split).read_text()
    with h5py.File(a.feature_hdf5) as fa, h5py.File(b.feature_hdf5) as fb:
        assert list(fa) == list(fb)
        lengths = [fa[k].shape[0] for k in fa]
        for k in list(fa)[:5]:
            np.testing.assert_array_equal(fa[k][...], fb[k][...])
    assert min(lengths) < 32 and max(lengths) > 128  # short and long videos
    c = write_synthetic(tmp_path / "c", "tiny", seed=1)
    assert c.caption_file("train").read_text() != a.caption_file("train").read_text()


def test_synth_benchmark_dims(tmp_path):
    for name, (vdim, tdim) in {"charades-small": (1024, 1024), "tvr-small": (3072, 768)}.items():
        layout = write_synthetic(tmp_path / name, name, scale=0.02)
        assert layout.collection == PRESETS[name].collection
        rep = check_dataset(layout)
        assert rep.ok and (rep.visual_dim, rep.text_dim) == (vdim, tdim)
