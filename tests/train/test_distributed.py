"""Data-parallel training, sharded evaluation and sharded index build on 2 CPU processes (torchrun, gloo), against
one process: the same losses, gradients, weights, metrics and search results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prvr.data.layout import DatasetLayout
from prvr.eval.evaluator import evaluate
from prvr.index.build import build_index
from prvr.index.search import Retriever
from prvr.models.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default per process; the single process alike
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
NO_DROPOUT = ["--set", "model.drop=0", "--set", "model.input_drop=0"]


def run(*args, torchrun: bool = False) -> subprocess.CompletedProcess:
    cmd = [*TORCHRUN, "-m", "prvr"] if torchrun else [sys.executable, "-m", "prvr"]
    r = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


TERMS = {"dreamprvr": ["clip_nce", "clip_triplet", "frame_nce", "frame_triplet", "query_diversity",
                       "query_similarity_preservation", "kl", "diffusion"],
         "hlformer": ["clip_nce", "clip_triplet", "frame_nce", "frame_triplet", "query_diversity", "partial_order"],
         "holmes": ["clip_edl", "clip_nce", "clip_triplet", "combine_edl", "frame_edl", "frame_nce", "frame_triplet",
                    "intra_video_edl", "query_diversity"],
         "maxsim": ["nce"]}


@pytest.mark.parametrize("model", sorted(TERMS))
def test_two_ranks_step_equals_one_process(model, tmp_path):
    """Losses, every term, gradients and updated weights of DDP steps (random, then hard negatives) equal one
    process with the whole global batch; without the gather they do not."""
    out = tmp_path / "eq.json"
    worker = Path(__file__).with_name("ddp_equivalence.py")
    r = subprocess.run([*TORCHRUN, str(worker), str(out), model], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    e = json.loads(out.read_text())
    assert e["world"] == 2 and e["term_names"] == sorted(TERMS[model])
    assert e["loss"] < 1e-5 and e["terms"] < 1e-5, e  # measured: dreamprvr 1e-7 and 4e-6 (query terms ~50)
    assert e["grad"] < 1e-5 and e["weights"] < 1e-5, e  # measured: 2e-7 each
    assert e["plain_grad"] > 1e-2, e  # local losses averaged by DDP: a different gradient (measured 0.4)


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """One process trains 2 epochs; 2 ranks train epoch 0 (capped by train.max_epochs), then resume for epoch 1
    through `prvr train --nproc 2`."""
    base = tmp_path_factory.mktemp("ddp")
    common = ["--preset", "tiny", "--data", tiny_data, "--epochs", "2", "--quiet", "--device", "cpu", *NO_DROPOUT]
    run("train", *common, "--out", base / "one")
    run("train", *common, "--set", "train.max_epochs=1", "--out", base / "two", torchrun=True)
    first = records(base / "two")
    r = run("train", "--resume", "--data", tiny_data, "--epochs", "2", "--quiet", "--device", "cpu",
            "--set", "train.max_epochs=2", "--nproc", "2", "--out", base / "two")
    assert "resumed from epoch 0" in r.stdout
    return base, first


def test_torchrun_training_equals_one_process(runs):
    base, first = runs
    one, two = records(base / "one"), records(base / "two")
    assert len(first) == 1 and [r["epoch"] for r in two] == [0, 1] == [r["epoch"] for r in one]
    for a, b in zip(one, two, strict=True):
        assert a["lr"] == b["lr"] and a["val"] == b["val"]
        assert a["train"].keys() == b["train"].keys()
        for k in a["train"]:
            assert b["train"][k] == pytest.approx(a["train"][k], rel=1e-5, abs=1e-6), k  # measured ~1e-7 relative
    wa, wb = load_file(base / "one" / "last.safetensors"), load_file(base / "two" / "last.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5  # measured 7e-7 after 2 epochs
    # rank 0 alone wrote: the same files, no per-rank leftovers
    assert sorted(p.name for p in (base / "two").iterdir()) == sorted(p.name for p in (base / "one").iterdir())


def test_early_stop_stops_every_rank(tiny_data, tmp_path):
    r = run("train", "--preset", "tiny", "--data", tiny_data, "--epochs", "6", "--quiet", "--device", "cpu",
            "--set", "train.lr=0", "--set", "train.max_es_cnt=0", "--out", tmp_path / "run", torchrun=True)
    assert [x["epoch"] for x in records(tmp_path / "run")] == [0, 1]
    assert r.stdout.count("early stop") == 1  # rank 0 logs; both ranks returned (rc 0)


def test_sharded_eval_and_index_build(runs, tiny_data, tmp_path):
    base, _ = runs
    ckpt = base / "one" / "best.safetensors"
    layout = DatasetLayout(tiny_data, "charades")
    model, _, _ = load_checkpoint(ckpt)
    single = evaluate(model, layout, "test", keep_scores=True)
    run("eval", "--checkpoint", ckpt, "--data", tiny_data, "--split", "test", "--json", tmp_path / "m.json",
        "--save-scores", tmp_path / "s.npy", "--quiet", "--device", "cpu", torchrun=True)
    m = json.loads((tmp_path / "m.json").read_text())
    assert {k: m[k] for k in single.metrics} == single.metrics  # exactly
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), single.scores, atol=1e-6)  # measured: equal

    build_index(ckpt, layout, "all", tmp_path / "one", progress=False)
    run("index", "build", "--checkpoint", ckpt, "--data", tiny_data, "--split", "all", "--out", tmp_path / "two",
        "--quiet", "--device", "cpu", torchrun=True)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["shards"] == ["shard-00000-r000-00000", "shard-00000-r001-00000"]
    a, b = Retriever(tmp_path / "one"), Retriever(tmp_path / "two")
    assert a.ids == b.ids and len(a) == manifest["n_videos"]
    for qid in single.query_ids[::5]:
        ha, hb = a.search_query_id(tiny_data, qid, k=10), b.search_query_id(tiny_data, qid, k=10)
        assert [h.video_id for h in ha] == [h.video_id for h in hb]
        assert [h.score for h in ha] == [h.score for h in hb]
        assert [(h.start, h.end) for h in ha] == [(h.start, h.end) for h in hb]


def test_global_batches_are_the_single_process_batches_split_per_rank():
    from torch.utils.data import DataLoader

    from prvr.train.distributed import GlobalBatches

    counts = [1, 3, 2, 2, 1, 4, 1, 2, 3, 1, 2]  # queries per video
    single = list(DataLoader(range(11), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5)))
    assert [b.tolist() for b in single] == list(GlobalBatches(counts, 4, 5))
    ranks = [GlobalBatches(counts, 4, 5, r, 3) for r in range(3)]
    assert len(ranks[0]) == 3 and ranks[0].dropped == 0  # the last batch (3 videos) is kept: one per rank
    assert len(GlobalBatches(counts, 4, 5, 0, 4)) == 2 and GlobalBatches(counts, 4, 5, 0, 4).dropped == 3
    for step, batch in enumerate(single[:2]):
        chunks = [list(rk)[step] for rk in ranks]
        assert sum(chunks, []) == batch.tolist() and [len(c) for c in chunks] == [2, 1, 1]
        shares = [rk.share(step, None) for rk in ranks]
        assert [s.video_start for s in shares] == [0, 2, 3] and {s.videos for s in shares} == {4}
        assert [s.query_start for s in shares] == [0, *np.cumsum([sum(counts[v] for v in c) for c in chunks])[:2]]
        assert shares[0].queries == sum(counts[v] for v in batch.tolist())


def test_gather_outputs_needs_declared_batch_dims():
    from dataclasses import dataclass

    from prvr.errors import PrvrError
    from prvr.train.distributed import gather_outputs

    @dataclass
    class Undeclared:
        query: torch.Tensor

    with pytest.raises(PrvrError, match="declares no batch_dims"):
        gather_outputs(Undeclared(torch.zeros(2, 3)), torch.zeros(2, dtype=torch.long), 1)


def test_shard_ranges_cover_in_order():
    from prvr import dist

    for n, world, align in ((10, 2, 4), (10, 3, 1), (2, 3, 1), (130, 2, 100), (0, 2, 1)):
        parts = [dist.shard_range(n, r, world, align) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        assert all(lo % align == 0 for lo, _ in parts if lo < n)  # shares start on batch boundaries
    assert [dist.shard_range(10, r, 2, 4) for r in range(2)] == [(0, 8), (8, 10)]
    assert dist.split_sizes(7, 3) == [3, 2, 2]


def test_holmes_trains_on_two_ranks(tiny_data, tmp_path):
    """Holmes' losses are made from gathered tokens (its outputs declare batch_dims), so `--nproc` trains it."""
    run("train", "--model", "holmes", "--preset", "tiny", "--data", tiny_data, "--epochs", "1", "--quiet",
        "--device", "cpu", "--nproc", "2", "--out", tmp_path / "run")
    (rec,) = records(tmp_path / "run")
    assert rec["epoch"] == 0 and "intra_video_edl" not in rec["train"] and np.isfinite(rec["train"]["loss"])


def test_nproc_failure_is_one_line(tmp_path):
    """A rank's user error ends `prvr train --nproc 2` with that one line and exit code 2: no launcher
    traceback, no line per rank."""
    r = subprocess.run([sys.executable, "-m", "prvr", "train", "--preset", "tiny", "--data", tmp_path / "none",
                        "--quiet", "--device", "cpu", "--nproc", "2", "--out", tmp_path / "run"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "caption file not found" in lines[0], r.stderr


def test_other_rank_errors_are_the_lines_rank_0_did_not_print(tmp_path):
    from prvr.cli.errors import other_rank_errors

    (tmp_path / "rank-0.txt").write_text("error: a\n")
    (tmp_path / "rank-1.txt").write_text("error: a\n")
    (tmp_path / "rank-2.txt").write_text("error: b\n")
    (tmp_path / "rank-10.txt").write_text("error: b\n")
    assert other_rank_errors(tmp_path) == ["error: rank 2: b"]
