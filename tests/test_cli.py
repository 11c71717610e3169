import subprocess
import sys

import pytest

COMMANDS = [[], ["synth"], ["data"], ["data", "check"], ["data", "convert"], ["train"], ["eval"],
            ["convert-checkpoint"], ["presets"], ["index"], ["index", "build"], ["index", "add"], ["search"]]


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


def test_yaml_config_and_overrides(tmp_path):
    from prvr.config import parse_set
    from prvr.models.presets import resolve

    y = tmp_path / "c.yaml"
    y.write_text("model: {hidden_size: 96}\ntrain: {lr: 1.0e-3, epochs: 3}\n")
    cfg = resolve(None, "tvr", y, [parse_set("train.epochs=5"), parse_set("loss.textual_structure=none")])
    assert (cfg.model.hidden_size, cfg.train.lr, cfg.train.epochs) == (96, 1e-3, 5)
    assert cfg.model.visual_dim == 3072 and cfg.loss.textual_structure == "none"
    y.write_text("model: {nosuch: 1}\n")
    r = cli("train", "--preset", "tvr", "--config", y, "--data", tmp_path)
    assert r.returncode == 2 and "c.yaml" in r.stderr and "nosuch" in r.stderr
