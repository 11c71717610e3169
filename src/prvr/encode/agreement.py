"""Do two encodings of the same frames rank videos alike? (bf16 autocast against fp32: bench/bf16_agreement.py,
tests/encode/test_bf16.py.) Frames are cut into pseudo-videos and scored as the index scores them: maxsim over the
clip cells and over the frames, equally weighted, tokens stored in float16."""

from __future__ import annotations

import numpy as np

from prvr.data.preprocess import clip_grid, frame_sequence


def maxsim_scores(frames: np.ndarray, queries: np.ndarray, per_video: int, store=np.float16) -> np.ndarray:
    """(n, D) frame vectors cut into consecutive videos of `per_video` frames, (q, D) normalised queries ->
    (q, videos) scores: 0.5 max over clip cells + 0.5 max over frames, tokens rounded to `store` (the index's
    float16)."""
    out = []
    for a in range(0, len(frames) - per_video + 1, per_video):
        raw = frames[a:a + per_video]
        c = clip_grid(raw).astype(store).astype(np.float32)
        f = frame_sequence(raw).astype(store).astype(np.float32)
        out.append(0.5 * (queries @ c.T).max(1) + 0.5 * (queries @ f.T).max(1))
    return np.stack(out, axis=1)


def topk_agreement(ref: np.ndarray, other: np.ndarray, k: int = 10) -> dict:
    """Compare the (queries, videos) scores `other` with the reference `ref`: the fraction of queries whose top-k
    ranking is identical (order included), of equal top-1, and per differing query the largest reference-score
    gap between the videos the two rankings put at the same place (`swap_gaps`)."""
    top_r, top_o = np.argsort(-ref, axis=1)[:, :k], np.argsort(-other, axis=1)[:, :k]
    same = (top_r == top_o).all(axis=1)
    rows = np.flatnonzero(~same)[:, None]
    gaps = np.abs(ref[rows, top_r[rows[:, 0]]] - ref[rows, top_o[rows[:, 0]]]).max(axis=1)
    srt = -np.sort(-ref, axis=1)
    return {"topk_equal": float(same.mean()), "top1_equal": float((top_r[:, 0] == top_o[:, 0]).mean()),
            "swap_gaps": [float(g) for g in gaps], "max_swap_gap": float(gaps.max(initial=0.0)),
            "max_abs_score_diff": float(np.abs(ref - other).max()),
            "median_top1_minus_topk": float(np.median(srt[:, 0] - srt[:, k - 1]))}
