import subprocess
import sys

import pytest

COMMANDS = [[], ["synth"], ["data"], ["data", "check"], ["data", "convert"], ["train"], ["eval"],
            ["convert-checkpoint"], ["presets"]]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_everywhere(cmd):
    r = cli(*cmd, "--help")
    assert r.returncode == 0 and "Usage" in r.stdout


@pytest.mark.parametrize("args,expect", [
    (["eval", "--checkpoint", "/nope.safetensors", "--data", "/tmp"], "checkpoint not found"),
    (["train", "--preset", "nosuch", "--data", "/tmp"], "unknown preset 'nosuch'"),
    (["train", "--preset", "charades", "--data", "/nonexistent", "--set", "train.lr"], "expected section.key=value"),
    (["train", "--preset", "charades", "--data", "/nonexistent", "--set", "train.nosuch=1"], "unknown config key"),
    (["train", "--preset", "charades", "--data", "/nonexistent"], "charadestrain.caption.txt"),
    (["synth", "/tmp/x", "--preset", "nosuch"], "unknown synthetic preset"),
    (["convert-checkpoint", "/nope.ckpt", "/tmp/out.safetensors"], "checkpoint not found"),
])
def test_user_errors_are_one_line_exit_2(args, expect):
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_text("garbage")
    r = cli("eval", "--checkpoint", p, "--data", tmp_path)
    assert r.returncode == 2 and "x.safetensors" in r.stderr and "Traceback" not in r.stderr
