"""Runs are never lost or misread: an existing run is refused without --resume/--overwrite, --resume keeps the saved
config and accepts (and reports) explicit changes, paths are stored absolute, training stops at the first
non-finite loss and never saves non-finite weights, --skip-bad leaves bad items out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from prvr.data.layout import DatasetLayout
from prvr.errors import NonFiniteError, PrvrError
from prvr.models.checkpoint import load_checkpoint, load_config, read_metadata
from prvr.train import loop
from prvr.train.loop import train
from prvr.train.optim import BertAdam
from tests.conftest import tiny_run_config

TINY = ["--set", "model.visual_dim=48", "--set", "model.text_dim=40", "--set", "model.hidden_size=32",
        "--set", "model.num_registers=3", "--set", "model.timesteps=4", "--set", "train.batch_videos=16",
        "--device", "cpu", "--quiet"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def quiet(*_):
    pass


def test_existing_run_is_refused_then_overwritten(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data)
    cfg.train.epochs = 1
    run = tmp_path / "run"
    train(cfg, run, progress=False, log=quiet)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(PrvrError, match="holds a run stopped after epoch 0.*--resume.*--overwrite"):
        train(cfg, run, progress=False, log=quiet)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # untouched
    (run / "notes.txt").write_text("mine")
    cfg.train.lr = 5e-4
    train(cfg, run, progress=False, log=quiet, overwrite=True)
    assert load_config(run / "last.safetensors").train.lr == 5e-4
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run / "notes.txt").read_text() == "mine"  # --overwrite removes the run's own files only
    with pytest.raises(PrvrError, match="contradict"):
        train(cfg, run, resume=True, overwrite=True, progress=False, log=quiet)


def test_resume_keeps_config_and_reports_changes(tiny_data, tmp_path):
    """More epochs and a moved data root on --resume, from another working directory with relative paths."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_data, work / "data")
    r = cli("train", "--preset", "charades", "--data", "data", "--out", "run", "--epochs", "1",
            "--set", "train.lr=7e-4", *TINY, cwd=work)
    assert r.returncode == 0, r.stderr
    saved = load_config(work / "run" / "last.safetensors")
    assert saved.data.root == str(work / "data")  # stored absolute
    (work / "data").rename(tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("train", "--resume", "--out", work / "run", "--epochs", "2", "--data", tmp_path / "moved", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "resume with changes" in r.stdout and "train.epochs: 1 -> 2" in r.stdout
    assert f"data.root: '{work / 'data'}' -> '{tmp_path / 'moved'}'" in r.stdout
    cfg = load_config(work / "run" / "last.safetensors")
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.hidden_size) == (2, 7e-4, 32)  # the saved config, changed
    recs = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1]
    assert "lr: 0.0007" in (work / "run" / "config.yaml").read_text()
    r = cli("train", "--resume", "--out", work / "run", "--set", "model.hidden_size=64", cwd=elsewhere)
    assert r.returncode == 2 and "model.hidden_size cannot change from 32 to 64" in r.stderr
    r = cli("train", "--resume", "--out", work / "run", "--set", "train.epochs=3", "--set", "train.seed=5",
            cwd=elsewhere)
    assert r.returncode == 0 and "train.seed: 0 -> 5" in r.stdout, r.stderr


def test_resume_drops_epochs_after_the_checkpoint(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data)
    run = tmp_path / "run"
    train(cfg, run, progress=False, log=quiet)
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    state = json.loads(read_metadata(run / "last.safetensors")["train_state"])
    # a run killed after writing epoch 2's metrics but before its checkpoint
    log.write_text("\n".join(lines + [json.dumps({"epoch": state["epoch"] + 1, "partial": True})]) + "\n")
    cfg.train.epochs = 3
    train(cfg, run, resume=True, progress=False, log=quiet)
    epochs = [json.loads(x)["epoch"] for x in log.read_text().splitlines()]
    assert epochs == [0, 1, 2] and "partial" not in log.read_text()


def test_nonfinite_loss_stops_before_any_save(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_run_config(tiny_data)
    real = loop.build_loss

    def poisoned(loss_cfg, model_cfg):
        criterion = real(loss_cfg, model_cfg)
        calls = {"n": 0}

        def call(out, labels, step):
            total, terms = criterion(out, labels, step)
            calls["n"] += 1
            if calls["n"] == 5:  # epoch 1, second step
                terms = {**terms, "kl": torch.tensor(float("nan"))}
                total = total + terms["kl"]
            return total, terms

        return call

    monkeypatch.setattr(loop, "build_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 1: the training loss is nan \(non-finite terms: kl\)"):
        train(cfg, run, progress=False, log=quiet)
    model, _, state = load_checkpoint(run / "last.safetensors")  # epoch 0's checkpoint is kept, finite
    assert state["epoch"] == 0 and all(torch.isfinite(p).all() for p in model.parameters())
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]


def test_nonfinite_weights_are_never_saved(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_run_config(tiny_data)
    real_step = BertAdam.step
    steps = {"n": 0}

    def exploding(self, *a, **kw):  # the last update of epoch 0 (3 steps of 16 videos) overflows a weight
        out = real_step(self, *a, **kw)
        steps["n"] += 1
        if steps["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(BertAdam, "step", exploding)
    with pytest.raises(NonFiniteError, match="epoch 0: .* weight tensors became NaN or Inf"):
        train(cfg, tmp_path / "run", progress=False, log=quiet)
    assert not (tmp_path / "run").exists()  # a fresh run that failed before its first checkpoint leaves nothing


def test_skip_bad_leaves_bad_videos_out(tiny_data, tmp_path):
    shutil.copytree(tiny_data, tmp_path / "data")
    layout = DatasetLayout(tmp_path / "data", "charades")
    train_vids = list(dict.fromkeys(line.split("#")[0] for line in layout.caption_file("train").read_text().splitlines()))
    val_caps = [line.split(" ")[0] for line in layout.caption_file("val").read_text().splitlines()]
    with h5py.File(layout.feature_hdf5, "a") as f:
        a = f[train_vids[3]][...]
        a[0, 0] = np.inf
        del f[train_vids[3]]
        f[train_vids[3]] = a
    with h5py.File(layout.query_feature_file, "a") as f:
        del f[val_caps[0]]
        f[val_caps[0]] = np.full((4, 40), np.nan, np.float32)
    cfg = tiny_run_config(tmp_path / "data")
    cfg.train.epochs = 1
    with pytest.raises(PrvrError, match=f"video '{train_vids[3]}' contains NaN or Inf"):
        train(cfg, tmp_path / "strict", progress=False, log=quiet)
    assert not (tmp_path / "strict").exists()
    logs = []
    res = train(cfg, tmp_path / "run", progress=False, log=logs.append, skip_bad=True)
    assert res.epochs_run == 1
    assert any(train_vids[3] in m and m.startswith("skipped") for m in logs)
    assert any(val_caps[0] in m and m.startswith("skipped") for m in logs)
