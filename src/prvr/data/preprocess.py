"""Per-video and per-query preprocessing of the PRVR protocol (identical in MS-SL, GMMFormer, HLFormer, DreamPRVR).

clip grid: mean-pool n frames into 32 cells, boundaries min(round_half_even(i*n/32), n-1);
frame sequence: keep n <= 128 frames, else the same pooling into 128 cells;
every row L2-normalised as x / (||x|| + 1e-5); query tokens normalised the same way and cut at 30.
"""

from __future__ import annotations

import numpy as np

L2_EPS = 1e-5


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise x / (||x||_2 + 1e-5), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + L2_EPS)


def cell_bounds(n: int, num_cells: int) -> np.ndarray:
    """(num_cells + 1,) boundaries b_i = min(round_half_even(i * n / num_cells), n - 1) over n raw frames."""
    return np.minimum(np.round(np.arange(num_cells + 1) * n / num_cells), n - 1).astype(np.int64)


def average_to_fixed_length(frames: np.ndarray, num_cells: int) -> np.ndarray:
    """Mean-pool (n, D) frames into (num_cells, D) cells with the release's boundary rule.

    Cell i averages rows b_i .. b_{i+1}-1 when b_i < b_{i+1}, else it is row b_i (short videos repeat
    frames; the very last frame falls out of the last cell). Vectorised with a cumulative sum.
    """
    frames = np.asarray(frames, dtype=np.float32)
    bounds = cell_bounds(frames.shape[0], num_cells)
    start, end = bounds[:-1], bounds[1:]
    csum = np.concatenate([np.zeros((1, frames.shape[1]), np.float64), np.cumsum(frames, axis=0, dtype=np.float64)])
    count = end - start
    pooled = (csum[end] - csum[start]) / np.maximum(count, 1)[:, None]  # (num_cells, D)
    single = count <= 1  # one row (or none: row b_i): the row itself, not a difference of running sums
    pooled[single] = frames[start[single]]
    return pooled.astype(np.float32)


def clip_grid(frames: np.ndarray, map_size: int = 32) -> np.ndarray:
    """(n, D) raw frames -> (map_size, D) normalised clip cells."""
    return l2_normalize(average_to_fixed_length(frames, map_size))


def frame_sequence(frames: np.ndarray, max_ctx_l: int = 128) -> np.ndarray:
    """(n, D) raw frames -> (min(n, max_ctx_l), D) normalised frame tokens."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.shape[0] > max_ctx_l:
        frames = average_to_fixed_length(frames, max_ctx_l)
    return l2_normalize(frames)


def query_tokens(tokens: np.ndarray, max_desc_l: int = 30) -> np.ndarray:
    """(n_tokens, Dq) token features -> normalised, first max_desc_l tokens."""
    return l2_normalize(tokens)[:max_desc_l]
