"""A NaN never becomes a score: evaluation and search refuse non-finite scores; `--skip-bad` leaves bad videos and
captions out of eval and index build (with a warning each) instead of stopping."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from prvr.data.layout import DatasetLayout
from prvr.errors import NonFiniteError, PrvrError
from prvr.eval.evaluator import evaluate
from prvr.eval.metrics import ranks_from_scores
from prvr.index.build import build_index
from prvr.index.search import Retriever
from prvr.models import build_model
from prvr.models.checkpoint import save_checkpoint
from prvr.models.presets import load_preset
from tests.conftest import tiny_model_config
from tests.test_malformed import prvr


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory):
    cfg = load_preset("charades")
    cfg.model = tiny_model_config()
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save_checkpoint(path, model, cfg)
    return model, path


def test_ranks_refuse_nan():
    s = torch.tensor([[0.1, float("nan"), 0.3], [0.2, 0.1, 0.0]])
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        ranks_from_scores(s, torch.tensor([0, 0]))  # NaN is never "higher": query 0 would rank first


def test_evaluation_refuses_nonfinite_scores(tiny_data, model_ckpt, monkeypatch):
    model, _ = model_ckpt
    real = model.score

    def poisoned(q, v):
        s = real(q, v)
        s[3, 5] = float("inf")
        return s

    monkeypatch.setattr(model, "score", poisoned)
    layout = DatasetLayout(tiny_data, "charades")
    caps = [line.split(" ")[0] for line in layout.caption_file("test").read_text().splitlines()]
    vids = list(dict.fromkeys(c.split("#")[0] for c in caps))
    with pytest.raises(NonFiniteError, match=f"query '{caps[3]}' against video '{vids[5]}' is inf"):
        evaluate(model, layout, "test")


def test_search_refuses_nonfinite_scores(tiny_data, model_ckpt, tmp_path, monkeypatch):
    _, ckpt = model_ckpt
    layout = DatasetLayout(tiny_data, "charades")
    build_index(ckpt, layout, "test", tmp_path / "idx", progress=False)
    r = Retriever(tmp_path / "idx")
    qid = layout.caption_file("test").read_text().split()[0]
    assert len(r.search_query_id(tiny_data, qid, k=3)) == 3
    monkeypatch.setattr(r, "model", _NaNQueries(r.model))
    with pytest.raises(PrvrError, match="NaN"):
        r.search_query_id(tiny_data, qid, k=3)
    with pytest.raises(PrvrError, match="NaN or Inf"):
        r.search_tokens_many([np.ones((3, 40), np.float32)], k=3)


class _NaNQueries:
    """A model whose query vectors are NaN (e.g. from a crafted checkpoint that escaped the weight check)."""

    def __init__(self, model):
        self._m = model

    def __getattr__(self, name):
        return getattr(self._m, name)

    def encode_queries(self, batch):
        q = self._m.encode_queries(batch)
        return q.map(lambda t: torch.full_like(t, float("nan")) if t.dim() == 3 else t)


def _poison(tmp_path, tiny_data):
    shutil.copytree(tiny_data, tmp_path / "data")
    layout = DatasetLayout(tmp_path / "data", "charades")
    caps = [line.split(" ")[0] for line in layout.caption_file("test").read_text().splitlines()]
    vids = list(dict.fromkeys(c.split("#")[0] for c in caps))
    with h5py.File(layout.feature_hdf5, "a") as f:
        a = f[vids[2]][...]
        a[1, 1] = np.nan
        del f[vids[2]]
        f[vids[2]] = a
    bad_cap = next(c for c in caps if not c.startswith(vids[2]))
    with h5py.File(layout.query_feature_file, "a") as f:
        del f[bad_cap]
        f[bad_cap] = np.full((3, 40), np.inf, np.float32)
    return layout, caps, vids, bad_cap


def test_eval_skip_bad(tiny_data, model_ckpt, tmp_path):
    _, ckpt = model_ckpt
    layout, caps, vids, bad_cap = _poison(tmp_path, tiny_data)
    code, out, err = prvr("eval", "--checkpoint", ckpt, "--data", layout.root, "--json", tmp_path / "m.json",
                          "--skip-bad", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert f"skipped: {layout.feature_hdf5}: video '{vids[2]}' contains NaN or Inf" in err
    assert f"caption '{bad_cap}' contains NaN or Inf" in err
    m = json.loads((tmp_path / "m.json").read_text())
    n_bad_video_caps = sum(c.startswith(vids[2] + "#") for c in caps)
    assert m["n_videos"] == len(vids) - 1 and m["n_queries"] == len(caps) - n_bad_video_caps - 1
    assert m["SumR"] < 400


def test_index_skip_bad(tiny_data, model_ckpt, tmp_path):
    _, ckpt = model_ckpt
    layout, caps, vids, _ = _poison(tmp_path, tiny_data)
    code, out, err = prvr("index", "build", "--checkpoint", ckpt, "--data", layout.root, "--out", tmp_path / "idx",
                          "--skip-bad", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert f"video '{vids[2]}' contains NaN or Inf" in err
    r = Retriever(tmp_path / "idx")
    assert vids[2] not in r.ids and len(r) == len(vids) - 1
