"""Two-stage search on a collection far larger than the candidate budget: stage 1 (FAISS over the tokens of every
token set) must find the videos exact search ranks first, including a video that wins only on its frames, and
stage 2 scores them exactly. Tokens are planted by hand, so the right answer is known."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from prvr.index.search import Retriever
from prvr.index.store import append_shard, create_index
from prvr.models import build_model
from prvr.models.base import QueryRepr
from prvr.models.checkpoint import save_checkpoint
from prvr.models.presets import default_config

N_VIDEOS, SHARD, D = 3000, 1000, 64
TOKENS, VIDEOS = 64, 16  # the candidate budget: 64 tokens, 16 videos, against 3,000 videos and 144,000 tokens


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def near(rng, q, cos):
    """A unit vector at cosine `cos` from unit q."""
    r = rng.standard_normal(q.shape)
    r = unit(r - (r @ q) * q)
    return cos * q + np.sqrt(1 - cos**2) * r


@pytest.fixture(scope="module", params=["sq8", "pq4", "sq4"])
def planted(tmp_path_factory, request):
    """3,000 videos of random tokens (32 clip cells, 16 frames). For each of 6 query directions q: one video whose
    frames hold q (frame-only winner: its clip cells are random), 40 videos whose best clip cell is at cos 0.5
    (clip distractors: with the random tokens' lucky tail they fill any clip-only candidate budget, but lose to
    the frame winner), and one video with q in a clip
    cell (clip winner, the best of all)."""
    rng = np.random.default_rng(0)
    work = tmp_path_factory.mktemp("planted")
    cfg = default_config()
    cfg.model.visual_dim, cfg.model.text_dim, cfg.model.hidden_size, cfg.model.num_registers = 16, 16, D, 2
    model = build_model(cfg.model)
    ckpt = work / "model.safetensors"
    save_checkpoint(ckpt, model, cfg)
    clip = unit(rng.standard_normal((N_VIDEOS, 32, D)))
    frames = unit(rng.standard_normal((N_VIDEOS, 16, D)))
    queries = unit(rng.standard_normal((6, D)))
    roles = rng.permutation(N_VIDEOS)
    truth = []
    for i, q in enumerate(queries):
        frame_winner, clip_winner = int(roles[i * 42]), int(roles[i * 42 + 1])
        frames[frame_winner, 5] = q
        frames[frame_winner, 6] = near(rng, q, 0.9)
        clip[clip_winner, 7] = q
        frames[clip_winner, 3] = near(rng, q, 0.8)
        for j in roles[i * 42 + 2:i * 42 + 42]:
            clip[j, rng.integers(32)] = near(rng, q, 0.5)
        truth.append((frame_winner, clip_winner))
    index = work / "index"
    manifest = create_index(index, ckpt, cfg.to_dict(), model.token_layouts(), model.score_weights(), True, None)
    for start in range(0, N_VIDEOS, SHARD):
        part = range(start, start + SHARD)
        meta = [{"n_raw_frames": 16, "duration": 8.0, "frame_times": [0.25 + 0.5 * f for f in range(16)]} for _ in part]
        manifest = append_shard(index, manifest, [f"v{v:05d}" for v in part],
                                {"clip": [clip[v] for v in part], "frame": [frames[v] for v in part]}, meta)
    r = subprocess.run([sys.executable, "-m", "prvr.cli", "index", "ann", str(index), "--nlist", "64", "--codes",
                        request.param], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return index, queries, truth


def query(q):
    return QueryRepr.single(torch.from_numpy(q.astype(np.float32))[None], ("clip", "frame")).normalize()


def test_frame_only_winner_is_found(planted):
    index, queries, truth = planted
    r = Retriever(index)
    assert r.ann is not None and len(r) == N_VIDEOS and r.ann.meta["n_tokens"] == N_VIDEOS * 48
    assert r.ann.lists is not None  # `prvr index ann` builds stage 2's lists too
    assert r.ann.meta["nlist"] == 64 and r.ann.codes in ("sq8", "pq4", "sq4")
    for q, (frame_winner, clip_winner) in zip(queries, truth, strict=True):
        exact = r.search_repr(query(q), 10, exact=True)
        assert [h.video_id for h in exact[:2]] == [f"v{clip_winner:05d}", f"v{frame_winner:05d}"]
        assert exact[1].set_scores["clip"] < 0.6 * 0.5 < 0.4 * 0.99 < exact[1].set_scores["frame"]  # wins on frames only
        approx = r.search_repr(query(q), 10, exact=False, candidate_tokens=TOKENS, candidate_videos=VIDEOS)
        assert [h.video_id for h in approx[:2]] == [h.video_id for h in exact[:2]]
        for a, e in zip(approx[:2], exact, strict=False):  # stage 2 is the exact score (FAISS's float32 sums: 6e-8)
            assert a.score == pytest.approx(e.score, abs=5e-7) and a.tokens == e.tokens
        assert len(approx) == 10
        assert approx[1].tokens["frame"] == 5 and approx[1].frame_time == 2.75  # the planted frame, in seconds


def test_candidates_are_within_budget(planted):
    index, queries, truth = planted
    r = Retriever(index)
    for q, (frame_winner, clip_winner) in zip(queries, truth, strict=True):
        cands = r.ann.candidates(query(q), r.ann.sizes(TOKENS, VIDEOS))
        assert len(cands) <= VIDEOS and np.all(np.diff(cands) > 0)
        assert {frame_winner, clip_winner} <= set(cands.tolist())
