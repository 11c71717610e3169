"""`train.max_epochs` (a cap on the epochs run, the LR schedule keeps `train.epochs`) and `prvr plot` (training
curves of several runs on one PNG), both through the CLI a user types."""

import json

import numpy as np
import pytest

from prvr.train.curves import parse_groups, read_curve
from prvr.train.optim import warmup_linear
from tests.train.test_train import cli

TINY = ["--set", "model.visual_dim=48", "--set", "model.text_dim=40", "--set", "model.hidden_size=32",
        "--set", "model.num_registers=3", "--set", "model.timesteps=4", "--set", "train.batch_videos=16",
        "--set", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def capped_run(tiny_data, tmp_path_factory):
    """The authors' practice: a 10-epoch schedule stopped after 2 epochs."""
    run = tmp_path_factory.mktemp("capped") / "run"
    r = cli("train", "--preset", "charades", "--data", tiny_data, "--out", run, "--quiet", "--device", "cpu", *TINY,
            "--set", "train.epochs=10", "--set", "train.max_epochs=2")
    assert r.returncode == 0, r.stderr
    return run, r.stdout


def test_max_epochs_caps_the_run_not_the_schedule(capped_run):
    run, stdout = capped_run
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1]
    assert "stopped at train.max_epochs=2 of a 10-epoch schedule" in stdout
    # 48 training videos in batches of 16: 3 steps an epoch, t_total = 3 x 10 = 30 (not 3 x 2 = 6, where the LR
    # after the second epoch would be 0); the LR recorded after epoch e is the one of step 3(e + 1)
    for r in recs:
        steps = 3 * (r["epoch"] + 1)
        assert r["lr"] == pytest.approx(1e-3 * warmup_linear(steps / 30, 0.01), rel=1e-12)
    assert recs[-1]["lr"] == pytest.approx(1e-3 * 24 / 29.7, rel=1e-9)
    assert "max_epochs: 2" in (run / "config.yaml").read_text()


def write_metrics(path, loss, sumr, split="val"):
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"epoch": e, "lr": 1e-4, "train": {"loss": a}, split: {"SumR": b}})
             for e, (a, b) in enumerate(zip(loss, sumr, strict=True))]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_groups_mean_and_spread(tmp_path):
    write_metrics(tmp_path / "a", [2.0, 1.5, 1.0], [100.0, 120.0, 150.0])
    write_metrics(tmp_path / "b", [2.2, 1.7], [110.0, 140.0], split="test")
    (g,) = parse_groups([f"seeds={tmp_path / 'a'},{tmp_path / 'b'}"])
    assert g.label == "seeds" and g.epochs == 2  # the epochs every run reached
    np.testing.assert_allclose(g.mean("sumr"), [105.0, 130.0])
    np.testing.assert_allclose(g.spread("sumr"), [np.std([100, 110], ddof=1), np.std([120, 140], ddof=1)])
    np.testing.assert_allclose(g.mean("loss"), [2.1, 1.6])
    assert read_curve(tmp_path / "a" / "metrics.jsonl").sumr == [100.0, 120.0, 150.0]


def colour_pixels(img, rgb, tol=0.02):
    return int((np.abs(img[..., :3] - np.array(rgb)[None, None]) < tol).all(-1).sum())


def test_plot_cli_draws_several_runs_on_one_png(capped_run, tmp_path):
    import matplotlib.image as mpimg

    run, _ = capped_run
    write_metrics(tmp_path / "s0", [2.2, 1.9, 1.6], [110.0, 125.0, 160.0])
    write_metrics(tmp_path / "s1", [2.0, 1.8, 1.5], [115.0, 135.0, 170.0])
    out = tmp_path / "figs" / "curves.png"
    r = cli("plot", run, f"original={tmp_path / 's0'},{tmp_path / 's1'}", "--out", out, "--title", "test")
    assert r.returncode == 0, r.stderr
    assert "original: 2 run(s), 3 epochs, last SumR 165.0" in r.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.shape[:2] == (420, 1100)
    c0, c1 = (0x1F / 255, 0x77 / 255, 0xB4 / 255), (0xFF / 255, 0x7F / 255, 0x0E / 255)  # the two runs' colours
    assert colour_pixels(img, c0) > 200 and colour_pixels(img, c1) > 200  # both curves drawn, in both panels
    assert not list(out.parent.glob(".*.tmp"))


@pytest.mark.parametrize("case,message", [
    ("missing", "no metrics.jsonl"),
    ("garbled", "metrics.jsonl:2: expected a JSON record with epoch, train.loss and a split's SumR"),
    ("nan", "metrics.jsonl:1: train.loss or SumR is not a finite number"),
    ("empty-label", "expected RUN or LABEL=RUN1,RUN2,..."),
])
def test_plot_bad_input_is_one_line_exit_2(tmp_path, case, message):
    run = tmp_path / "run"
    if case == "garbled":
        write_metrics(run, [1.0], [100.0])
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"epoch": 1, "train": {}}\n')
    elif case == "nan":
        (run.mkdir())
        (run / "metrics.jsonl").write_text('{"epoch": 0, "train": {"loss": NaN}, "val": {"SumR": 1.0}}\n')
    spec = f"={run}" if case == "empty-label" else str(run)
    out = tmp_path / "x.png"
    r = cli("plot", spec, "--out", out)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
