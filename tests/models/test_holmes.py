"""Holmes beyond parity: the multi-query form trained, evaluated, indexed and searched through the CLI (several
weighted rows per query score in the index exactly as in the model), the epoch switches, exact resume, the ablation
switches, and the blocked scoring of many-row queries."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from prvr.data.datasets import Batch
from prvr.errors import CheckpointError
from prvr.index.search import Retriever
from prvr.models import base, build_model
from prvr.models.base import TrainStep
from prvr.models.checkpoint import load_checkpoint, read_metadata
from prvr.models.holmes import HolmesLoss
from prvr.models.holmes.convert import convert_state_dict
from prvr.models.holmes.transport import pot_inputs, transport_plan
from prvr.models.presets import load_preset
from prvr.train.loop import train
from tests.models.test_model import batch as random_batch


def cli(*args):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True)


def tiny(root=None, **model):
    cfg = load_preset("tiny", "holmes")
    for k, v in model.items():
        setattr(cfg.model, k, v)
    cfg.data.root = None if root is None else str(root)
    return cfg


@pytest.fixture(scope="module")
def multi_run(tiny_data, tmp_path_factory):
    """The multi-query form trained 2 epochs through the CLI (epoch 1: hard negatives, refined labels, intra-video
    evidence), evaluated with --save-scores and indexed."""
    out = tmp_path_factory.mktemp("holmes-multi")
    run, index = out / "run", out / "index"
    r = cli("train", "--model", "holmes", "--preset", "tiny", "--set", "model.query_form=multi", "--data", tiny_data,
            "--out", run, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    r = cli("eval", "--checkpoint", run / "best.safetensors", "--data", tiny_data, "--split", "test",
            "--save-scores", out / "scores.npy", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    r = cli("index", "build", "--checkpoint", run / "best.safetensors", "--data", tiny_data, "--split", "test",
            "--out", index, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    return run, out / "scores.npy", index


def test_multi_query_epoch_switches(multi_run):
    run, _, _ = multi_run
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["hard_negative"] for e in epochs] == [False, True]
    assert "intra_video_edl" not in epochs[0]["train"] and epochs[1]["train"]["intra_video_edl"] > 0
    assert all(np.isfinite(v) for e in epochs for v in e["train"].values())
    _, cfg, _ = load_checkpoint(run / "best.safetensors")
    assert cfg.model.query_form == "multi"


def test_multi_query_index_scores_as_the_model(multi_run, tiny_data):
    """Each query is a pooled row for clips plus one weighted row per token for frames; the index scales every row
    by w_s * a_m and must give the model's score matrix (float16 tokens) and its ranking."""
    run, scores_path, index = multi_run
    scores = np.load(scores_path)
    r = Retriever(index)
    from prvr.data.datasets import SplitIndex
    from prvr.data.layout import DatasetLayout

    split = SplitIndex.from_layout(DatasetLayout(tiny_data, "charades"), "test")
    assert r.ids == split.video_ids
    q = r.embed(np.random.default_rng(0).standard_normal((7, 40)).astype(np.float32))
    assert q.vectors.shape[1] == 8 and q.targets == ("clip",) + ("frame",) * 7
    for qi in range(0, len(split.query_ids), 5):
        hits = r.search_query_id(tiny_data, split.query_ids[qi], k=len(r))
        got = np.array([h.score for h in sorted(hits, key=lambda h: split.video_ids.index(h.video_id))])
        np.testing.assert_allclose(got, scores[qi], atol=5e-3)
        assert all(h.score == pytest.approx(sum(h.set_scores.values()), abs=1e-5) for h in hits)
        best = int(np.argmax(scores[qi]))
        if np.sort(scores[qi])[-1] - np.sort(scores[qi])[-2] > 1e-2:
            assert hits[0].video_id == split.video_ids[best]


def test_multi_query_two_stage_search(multi_run, tiny_data):
    _, _, index = multi_run
    r = cli("index", "ann", index)
    assert r.returncode == 0, r.stderr
    exact, staged = Retriever(index), Retriever(index)
    assert staged.ann is not None
    from prvr.data.datasets import SplitIndex
    from prvr.data.layout import DatasetLayout

    qid = SplitIndex.from_layout(DatasetLayout(tiny_data, "charades"), "test").query_ids[0]
    a = exact.search_query_id(tiny_data, qid, k=5, exact=True)
    b = staged.search_query_id(tiny_data, qid, k=5)
    assert [h.video_id for h in a] == [h.video_id for h in b]


def test_resume_is_exact(tiny_data, tmp_path):
    """Killed after epoch 0 and resumed: the same weights as a straight run through the epoch-1 switches."""
    cfg = tiny(tiny_data)
    train(cfg, tmp_path / "straight", progress=False, log=lambda *_: None)

    class Killed(Exception):
        pass

    def kill(msg):
        if msg.startswith("epoch 0"):
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", progress=False, log=kill)
    assert json.loads(read_metadata(tmp_path / "resumed" / "last.safetensors")["train_state"])["epoch"] == 0
    train(cfg, tmp_path / "resumed", resume=True, progress=False, log=lambda *_: None)
    a, _, _ = load_checkpoint(tmp_path / "straight" / "last.safetensors")
    b, _, _ = load_checkpoint(tmp_path / "resumed" / "last.safetensors")
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), n


@pytest.mark.parametrize("form", ["single", "multi"])
def test_ablation_switches(form):
    """Each switch of the paper's ablations removes or changes exactly its part of the loss; gradients stay finite."""
    cfg = tiny(query_form=form)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    b = random_batch(n_videos=4, caps=(2, 1, 3, 2), lens=(5, 40, 200, 90), cfg=cfg.model)
    out = model.forward_train(b)

    def terms(**loss):
        lc = load_preset("tiny", "holmes").loss
        for k, v in loss.items():
            setattr(lc, k, v)
        total, t = HolmesLoss(lc, cfg.model)(out, b.labels, TrainStep(epoch=5, generator=torch.Generator().manual_seed(0)))
        return total, t

    total, full = terms()
    assert {"frame_edl", "clip_edl", "combine_edl", "intra_video_edl", "query_diversity"} <= set(full)
    (g,) = torch.autograd.grad(total, [model.query_pooling.weight], retain_graph=True)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert not {"frame_edl", "clip_edl", "combine_edl"} & set(terms(inter_video_edl=False)[1])
    assert "combine_edl" not in terms(combine_views=False)[1]
    assert "intra_video_edl" not in terms(intra_video_edl=False)[1]
    assert terms(refine_start_epoch=6)[1].keys() == set(full) - {"intra_video_edl"}
    one_hot = terms(query_identification=False)[1]  # after warm-up, but one-hot labels: as before warm-up
    before = terms(refine_start_epoch=6)[1]
    for k in ("frame_edl", "clip_edl", "combine_edl"):
        assert torch.equal(one_hot[k], before[k])
    no_bin = terms(pot_dustbin=False)[1]["intra_video_edl"]
    assert torch.isfinite(no_bin) and not torch.equal(no_bin, full["intra_video_edl"])


def test_transport_plan_rows_and_dustbin():
    """Plan rows of real captions sum to 1, padded rows are 0; the dustbin takes mass from the clips no caption
    matches (a uniform similarity block moves less mass to clips than without it)."""
    g = torch.Generator().manual_seed(0)
    clips, query = torch.randn(3, 32, 16, generator=g), torch.randn(5, 16, generator=g)
    labels = torch.tensor([0, 0, 1, 2, 2])
    sim, mask = pot_inputs(clips, query, labels)
    assert mask.tolist() == [[1, 1], [1, 0], [1, 1]]
    for dustbin in (True, False):
        plan = transport_plan(sim, mask, 0.1, 0.3, 50, dustbin)
        torch.testing.assert_close(plan.sum(-1), mask, atol=1e-5, rtol=0)
        assert torch.isfinite(plan).all()


def test_blocked_scoring_equals_one_pass(monkeypatch):
    """Many-row queries are scored in blocks of videos; the result is the one-pass score."""
    cfg = tiny(query_form="multi")
    model = build_model(cfg.model).eval()
    b = random_batch(n_videos=3, caps=(2, 1, 3), cfg=cfg.model)
    with torch.no_grad():
        q, v = model.encode_queries(b), model.encode_videos(b)
        whole = model.score(q, v)
        monkeypatch.setattr(base, "SCORE_BLOCK", 1)  # one video per block
        blocked = model.score(q, v)
    torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=0)


def test_convert_refuses_the_other_query_form():
    single = build_model(tiny().model)
    multi_state = {k.replace("frame_query_encoder.", "frame_branch_query_encoder."): v
                   for k, v in build_model(tiny(query_form="multi").model).state_dict().items()}
    with pytest.raises(CheckpointError, match="multi-query form"):
        convert_state_dict(multi_state, single)


def test_encode_queries_of_one_caption():
    """A batch of one caption keeps its batch dimension (the original's .squeeze() collapses it)."""
    for form in ("single", "multi"):
        model = build_model(tiny(query_form=form).model).eval()
        text = torch.randn(1, 6, 40)
        with torch.no_grad():
            q = model.encode_queries(Batch(text=text, text_mask=torch.ones(1, 6)))
        assert q.vectors.shape[:2] == (1, 2 if form == "single" else 7)


@pytest.mark.parametrize("query_form", ["single", "multi"])
def test_recompute_of_frame_bank_and_query_branch_keeps_loss_and_gradients(query_form):
    """Training with dropout: the frame bank (one chunk: the whole batch) and both query passes recomputed in
    backward replay their dropout masks, so loss and gradients are those of keeping every activation."""
    cfg = tiny(query_form=query_form)
    model = build_model(cfg.model).train()
    criterion = HolmesLoss(cfg.loss, cfg.model)
    b = random_batch(n_videos=3, caps=(2, 1, 3), cfg=cfg.model)

    def run(n):
        model.set_recompute(n)
        assert model.recompute_queries == (n > 0)
        torch.manual_seed(3)
        loss, _ = criterion(model.forward_train(b), b.labels, TrainStep())
        model.zero_grad()
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    loss0, g0 = run(0)
    loss1, g1 = run(100)
    assert torch.equal(loss1, loss0)
    assert g0.keys() == g1.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-6, rtol=0, msg=k)
