import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from prvr.data.layout import DatasetLayout
from prvr.eval.evaluator import evaluate
from prvr.models import build_model
from prvr.models.checkpoint import load_checkpoint, read_metadata
from prvr.synth.synthetic import write_synthetic
from prvr.train.loop import train
from tests.conftest import tiny_run_config


def cli(*args):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    write_synthetic(root, "tiny", scale=3.0)
    return root


def test_training_raises_sumr_clearly(small_data, tmp_path):
    cfg = tiny_run_config(small_data)
    cfg.train.epochs = 5
    torch.manual_seed(0)
    untrained = evaluate(build_model(cfg.model), DatasetLayout(small_data, "charades"), "test").metrics
    res = train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    model, _, state = load_checkpoint(tmp_path / "run" / "best.safetensors")
    trained = evaluate(model, DatasetLayout(small_data, "charades"), "test").metrics
    assert trained["SumR"] > untrained["SumR"] + 40, (untrained, trained)
    assert state["epoch"] == res.best_epoch
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 and {"train", "val", "lr", "epoch"} <= set(json.loads(lines[-1]))
    assert (tmp_path / "run" / "config.yaml").exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_resume_is_exact(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data)
    cfg.train.epochs = 2
    train(cfg, tmp_path / "straight", progress=False, log=lambda *_: None)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(msg):
        if msg.startswith("epoch 0"):
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", progress=False, log=kill_after_first_epoch)
    assert json.loads(read_metadata(tmp_path / "resumed" / "last.safetensors")["train_state"])["epoch"] == 0
    train(cfg, tmp_path / "resumed", resume=True, progress=False, log=lambda *_: None)
    a, _, sa = load_checkpoint(tmp_path / "straight" / "last.safetensors")
    b, _, sb = load_checkpoint(tmp_path / "resumed" / "last.safetensors")
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), n
    assert sa["best_sumr"] == sb["best_sumr"]


def test_hard_negative_switch_and_early_stop(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data)
    cfg.train.epochs = 6
    cfg.train.hard_negative_start_epoch = 1
    cfg.train.max_es_cnt = 0
    cfg.train.lr = 0.0  # nothing improves after epoch 0: stops after two non-improving epochs at most
    logs = []
    res = train(cfg, tmp_path / "run", progress=False, log=logs.append)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["hard_negative"] is False and recs[1]["hard_negative"] is True
    assert res.epochs_run == 2 and any("early stop" in m for m in logs)


def test_cli_train_eval_and_scores(tiny_data, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--preset", "charades", "--data", tiny_data, "--out", run, "--epochs", "1", "--quiet",
            "--set", "model.visual_dim=48", "--set", "model.text_dim=40", "--set", "model.hidden_size=32",
            "--set", "train.batch_videos=16", "--device", "cpu", "--amp")
    assert r.returncode == 0, r.stderr
    assert "amp: true" in (run / "config.yaml").read_text()
    scores, metrics = tmp_path / "s.npy", tmp_path / "m.json"
    r = cli("eval", "--checkpoint", run / "best.safetensors", "--data", tiny_data, "--split", "test",
            "--save-scores", scores, "--json", metrics, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "SumR" in r.stdout
    m = json.loads(metrics.read_text())
    S = np.load(scores)
    layout = DatasetLayout(tiny_data, "charades")
    caps = layout.caption_file("test").read_text().split("\n")
    qids = [c.split(" ")[0] for c in caps if c]
    vids = list(dict.fromkeys(q.split("#")[0] for q in qids))
    assert S.shape == (len(qids), len(vids)) == (m["n_queries"], m["n_videos"])
    # rows in caption order, columns in first-appearance order: recompute the metric from the matrix
    gt = np.array([vids.index(q.split("#")[0]) for q in qids])
    ranks = 1 + (S > S[np.arange(len(gt)), gt][:, None]).sum(1)
    assert m["R@10"] == pytest.approx(100 * np.mean(ranks <= 10))
    # and the model scores these very queries the same way
    model, _, _ = load_checkpoint(run / "best.safetensors")
    res = evaluate(model, layout, "test", keep_scores=True)
    np.testing.assert_allclose(res.scores, S, atol=1e-6)


def authors_checkpoint(golden, path, collection="charades"):
    z, meta = golden
    config = {"visual_feat_dim": 48, "q_feat_size": 40, "hidden_size": 64, "n_heads": 4, "num_registers": 4,
              "timesteps": 5, "sft_factor": 0.6, "clip_scale_w": 0.6, "frame_scale_w": 0.4, "map_size": 32,
              "max_ctx_l": 128, "max_desc_l": 30, "input_drop": 0.25, "drop": 0.25, "collection": collection,
              "visual_feature": "i3d_rgb_lgi", "loss_factor": [0.02, 0.04, 0.003, 0.002, 1e-4, 1e-3],
              "neg_factor": [0.2, 32, 1], "margin": 0.2, "lr": 2e-4, "batchsize": 128, "model_root": "/x/ckpt"}
    state = {k[len("state/"):]: torch.from_numpy(z[k]) for k in z if k.startswith("state/")}
    torch.save({"config": config, "epoch": 34, "model_val": 80.0, "state_dict": state, "optimizer": {}}, path)


def test_convert_checkpoint_then_eval(golden, tiny_data, tmp_path):
    src, out = tmp_path / "best.ckpt", tmp_path / "converted.safetensors"
    authors_checkpoint(golden, src)
    r = cli("convert-checkpoint", src, out)
    assert r.returncode == 0, r.stderr
    model, cfg, state = load_checkpoint(out)
    assert cfg.data.collection == "charades" and cfg.model.num_registers == 4 and state["epoch"] == 34
    z, _ = golden
    t = lambda k: torch.from_numpy(z[k])  # noqa: E731
    with torch.no_grad():
        clip, _, _ = model.video_tokens(t("input/clip_feat"), t("input/frame_feat"), t("input/frame_mask"))
    np.testing.assert_allclose(clip.numpy(), z["output/encoded_clip"], atol=1e-5, rtol=0)
    r = cli("eval", "--checkpoint", out, "--data", tiny_data, "--split", "test", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "charades test" in r.stdout


def test_convert_refuses_pickled_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"config": {}, "state_dict": Evil()}))
    r = cli("convert-checkpoint", bad, tmp_path / "out.safetensors")
    assert r.returncode == 2 and "pwned" not in r.stdout
    assert r.stderr.count("\n") == 1 and "evil.ckpt" in r.stderr


def test_bf16_autocast_training_and_eval(tiny_data, tmp_path):
    """--amp: bf16 autocast in training and evaluation runs end to end and stays close to fp32."""
    losses = {}
    for amp in (False, True):
        cfg = tiny_run_config(tiny_data)
        cfg.train.epochs, cfg.train.amp = 2, amp
        torch.manual_seed(0)
        train(cfg, tmp_path / f"run-{amp}", progress=False, log=lambda *_: None)
        recs = [json.loads(x) for x in (tmp_path / f"run-{amp}" / "metrics.jsonl").read_text().splitlines()]
        losses[amp] = np.array([r["train"]["loss"] for r in recs])
    # bf16 training follows the fp32 loss curve (measured: 0.4 % and 0.8 % apart) and it really ran in bf16
    np.testing.assert_allclose(losses[True], losses[False], rtol=0.03)
    assert losses[True][1] < 0.9 * losses[True][0] and not np.array_equal(losses[True], losses[False])
    model, saved, _ = load_checkpoint(tmp_path / "run-True" / "best.safetensors")
    assert saved.train.amp and all(p.dtype == torch.float32 for p in model.parameters())
    layout = DatasetLayout(tiny_data, "charades")
    full = evaluate(model, layout, "test", keep_scores=True)
    half = evaluate(model, layout, "test", keep_scores=True, amp=True)
    assert half.scores.dtype == np.float32
    np.testing.assert_allclose(half.scores, full.scores, atol=0.01, rtol=0)  # measured 0.0025
    assert not np.array_equal(half.scores, full.scores)  # it really ran in bf16
    r = cli("eval", "--checkpoint", tmp_path / "run-True" / "best.safetensors", "--data", tiny_data, "--amp", "--quiet")
    assert r.returncode == 0 and "SumR" in r.stdout, r.stderr


def test_convert_the_authors_own_checkpoint(tmp_path):
    """A checkpoint written by the original main.py (it pickles the LR schedule object in the optimiser state):
    imported weights-only, every weight lands on its place."""
    from prvr.models.dreamprvr.convert import original_name
    from tests.conftest import GOLDEN_DIR

    out = tmp_path / "converted.safetensors"
    r = cli("convert-checkpoint", GOLDEN_DIR / "dreamprvr-authors-small.ckpt", out, "--model", "dreamprvr")
    assert r.returncode == 0, r.stderr
    model, cfg, state = load_checkpoint(out)
    z = np.load(GOLDEN_DIR / "dreamprvr-steps-seed0.npz")  # the checkpoint holds the weights after its 10 steps
    ours = model.state_dict()
    names = [k[len("weights10/"):] for k in z.files if k.startswith("weights10/")]
    assert len(names) == len(ours) == 393
    for name in names:
        assert torch.equal(ours[original_name(name)], torch.from_numpy(z[f"weights10/{name}"])), name
    assert cfg.model.hidden_size == 16 and state["epoch"] == 3
