"""`prvr compare`: several models trained with their presets on one dataset, measured the same way, one table;
end to end through the CLI a user types (synthetic data written by `prvr synth`)."""

import json

import numpy as np
import pytest

from prvr.eval.metrics import KS
from prvr.models import build_model
from prvr.models.presets import resolve
from tests.train.test_train import cli

MODELS = ("hlformer", "dreamprvr", "holmes")
NPY_HEADER = 128  # bytes of np.save's header for these arrays (format 1.0)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    r = cli("synth", root / "data", "--preset", "tiny")
    assert r.returncode == 0, r.stderr
    out, js = root / "runs", root / "compare.json"
    r = cli("compare", "--data", root / "data", "--collection", "charades", "--models", ",".join(MODELS),
            "--preset", "tiny", "--epochs", "1", "--out", out, "--json", js, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return root, r.stdout, json.loads(js.read_text())


def test_one_table_of_every_model(compared):
    _, stdout, result = compared
    for text in (*MODELS, "R@1", "R@100", "SumR", "params", "s/epoch", "eval s", "B/video"):
        assert text in stdout
    for r in result["models"]:  # each row as the JSON has it
        assert f"{r['metrics']['SumR']:.1f}" in stdout and f"{r['parameters']:,}" in stdout
    assert stdout.index("hlformer") < stdout.index("dreamprvr") < stdout.index("holmes")  # the order asked


def test_each_row_measures_its_own_trained_model(compared):
    root, _, result = compared
    rows = result["models"]
    assert [r["model"] for r in rows] == list(MODELS)
    for r in rows:
        m = r["metrics"]
        recalls = [m[f"R@{k}"] for k in KS]
        assert all(0 <= a <= b <= 100 for a, b in zip(recalls, recalls[1:], strict=False))
        assert m["SumR"] == pytest.approx(sum(recalls), abs=1e-9)
        assert m["R@100"] == 100.0  # 16 test videos: every rank is within 100
        cfg = resolve(r["model"], "tiny")
        assert r["parameters"] == sum(p.numel() for p in build_model(cfg.model).parameters())
        assert r["epochs"] == 1 and r["train_epoch_s"] > 0 and r["eval_s"] > 0
        run = root / "runs" / r["model"]
        rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        assert 0 < rec["train_seconds"] <= rec["seconds"] and r["train_epoch_s"] == rec["train_seconds"]
        # the index of the test split: float16 tokens of every set + int64 offsets, per video
        manifest = json.loads((run / "index" / "manifest.json").read_text())
        n, D = manifest["n_videos"], cfg.model.hidden_size
        assert n == 16
        rows_total = 0
        for shard in manifest["shards"]:
            for name in manifest["token_sets"]:
                offsets = np.load(run / "index" / shard / f"{name}.offsets.npy")
                rows_total += int(offsets[-1])
                if name == "clip":
                    assert np.all(np.diff(offsets) == cfg.model.map_size)
        n_sets, n_shards = len(manifest["token_sets"]), len(manifest["shards"])
        expected = 2 * D * rows_total + n_sets * (8 * (n + n_shards) + 2 * NPY_HEADER * n_shards)
        assert r["index_bytes_per_video"] * n == pytest.approx(expected)


def test_a_second_compare_needs_overwrite_and_bad_models_are_one_line(compared, tmp_path):
    root, _, _ = compared
    base = ["compare", "--data", root / "data", "--collection", "charades", "--preset", "tiny", "--epochs", "1"]
    for args, message in (([*base, "--out", root / "runs"], "pass --overwrite"),
                          ([*base, "--out", tmp_path, "--models", "hlformer,nosuch"], "unknown model 'nosuch'"),
                          ([*base, "--out", tmp_path, "--models", "holmes,holmes"], "listed twice"),
                          ([*base, "--out", tmp_path, "--preset", "nosuch"], "unknown preset 'nosuch'")):
        r = cli(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
