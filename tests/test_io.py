"""Atomic writes: temporaries are removed on failure and, after a kill -9, by the next write into the directory;
a failed write is one OutputError naming the path."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from prvr.errors import OutputError
from prvr.io import atomic_path, check_writable, remove_stale_temps, write_text_atomic


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "out.txt").write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "out.txt").read_text() == "previous" and sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_disk_errors_are_one_line(tmp_path, monkeypatch):
    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"out\.bin: cannot write \(no space left on the device\)"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            monkeypatch.setattr(os, "replace", full)
            tmp.write_bytes(b"x")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputError, match="not a directory"):
        check_writable(tmp_path / "f" / "out.json", "--json")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    stale = tmp_path / f".feature.hdf5.{dead}.0a1b2c3d.tmp"
    ours = tmp_path / f".feature.hdf5.{live}.0a1b2c3d.tmp"
    stale_dir = tmp_path / f".shard-00003.{dead}.9f8e7d6c.tmp"
    stale.write_bytes(b"x" * 1000)
    ours.write_bytes(b"y")
    stale_dir.mkdir()
    (stale_dir / "ids.json").write_text("[]")
    (tmp_path / ".hidden.tmp").write_text("not ours: no pid in the name")
    write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
    assert not stale.exists() and not stale_dir.exists()
    assert ours.exists() and (tmp_path / ".hidden.tmp").exists() and (tmp_path / "config.yaml").exists()
    assert remove_stale_temps(tmp_path) == []


def test_killed_synth_leaves_temporaries_the_next_run_removes(tmp_path):
    """kill -9 in the middle of `prvr synth`: its hidden temporaries stay (nothing can run on SIGKILL); the next
    successful run into the same place removes them."""
    root = tmp_path / "root"
    feature_dir = root / "charades" / "FeatureData" / "i3d_rgb_lgi"
    proc = subprocess.Popen([sys.executable, "-m", "prvr.cli", "synth", str(root), "--preset", "charades-small",
                             "--scale", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(feature_dir.glob(".feature.hdf5.*.tmp")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(root.rglob(".*.tmp"))
    assert left and not (feature_dir / "feature.hdf5").exists()
    r = subprocess.run([sys.executable, "-m", "prvr.cli", "synth", str(root), "--preset", "tiny"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert list(root.rglob(".*.tmp")) == [] and (feature_dir / "feature.hdf5").exists()


def test_sigterm_removes_temporaries(tmp_path):
    """SIGTERM (what `kill` and service managers send) unwinds like Ctrl-C: no temporary is left."""
    root = tmp_path / "root"
    feature_dir = root / "charades" / "FeatureData" / "i3d_rgb_lgi"
    proc = subprocess.Popen([sys.executable, "-m", "prvr.cli", "synth", str(root), "--preset", "charades-small",
                             "--scale", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(feature_dir.glob(".feature.hdf5.*.tmp")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert list(root.rglob(".*.tmp")) == [] and not (feature_dir / "feature.hdf5").exists()
