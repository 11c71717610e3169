"""Every registered model, end to end through the CLI a user types: synth -> train one epoch -> eval -> index build
-> search -> the HTTP API. Parametrised over the registry, so a new model is covered the moment it registers."""

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from prvr.models import get_entry, model_names
from prvr.serve.app import create_app


def cli(*args):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def everyday(tmp_path_factory):
    """A small `everyday` corpus: real MiniLM query tokens (384-d), 512-d frame features, free text works."""
    root = tmp_path_factory.mktemp("every-model")
    r = cli("synth", root, "--preset", "everyday", "--scale", "0.08")
    assert r.returncode == 0, r.stderr
    return root


DATA = ["--set", "data.collection=everyday", "--set", "data.visual_feature=projected",
        "--set", "model.visual_dim=512", "--set", "model.text_dim=384"]


@pytest.mark.parametrize("model", model_names())
def test_model_end_to_end(model, everyday, tmp_path):
    assert "tiny" in get_entry(model).preset_names(), f"{model} ships no `tiny` preset"
    run, index = tmp_path / "run", tmp_path / "index"
    r = cli("train", "--model", model, "--preset", "tiny", "--data", everyday, "--out", run, "--epochs", "1",
            "--device", "cpu", "--quiet", *DATA)
    assert r.returncode == 0, r.stderr
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["val"]["SumR"] > 0
    ckpt = run / "best.safetensors"

    r = cli("eval", "--checkpoint", ckpt, "--data", everyday, "--split", "test", "--json", tmp_path / "m.json",
            "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["model"] == model and 0 <= metrics["SumR"] <= 400 and metrics["n_videos"] > 1

    r = cli("index", "build", "--checkpoint", ckpt, "--data", everyday, "--split", "test", "--out", index,
            "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    r = cli("search", index, "someone washing dishes in the sink", "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and all(h["end"] > h["start"] and h["score"] == pytest.approx(sum(h["set_scores"].values()),
                                                                                       abs=1e-5) for h in hits)

    client = TestClient(create_app(index), base_url="http://127.0.0.1")
    body = client.get("/search", params={"q": "someone washing dishes in the sink", "k": 3}).json()
    assert [h["video_id"] for h in body["hits"]] == [h["video_id"] for h in hits]
    assert client.get(f"/videos/{hits[0]['video_id']}").json()["duration"] > 0
