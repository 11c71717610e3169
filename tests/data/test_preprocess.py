import numpy as np
import pytest

from prvr.data.preprocess import (
    average_to_fixed_length,
    clip_grid,
    frame_sequence,
    l2_normalize,
    query_tokens,
)


def test_golden_inputs_from_raw_frames(golden):
    z, _ = golden
    for i in range(6):
        raw = z[f"raw_frames/{i}"]
        clip = clip_grid(raw)
        frames = frame_sequence(raw)
        n = len(frames)
        assert clip.shape == (32, 48)
        np.testing.assert_allclose(clip, z["input/clip_feat"][i], atol=1e-6)
        np.testing.assert_allclose(frames, z["input/frame_feat"][i][:n], atol=1e-6)
        assert z["input/frame_mask"][i].sum() == n == min(len(raw), 128)


def test_golden_query_tokens_are_normalised_and_short(golden):
    # the golden tokens are already normalised: ||x|| = r / (r + 1e-5) for the raw norm r, i.e. just under 1
    z, _ = golden
    feats, mask = z["input/query_feat"], z["input/query_mask"]
    norms = np.linalg.norm(feats, axis=-1)[mask > 0]
    assert np.all((norms < 1.0) & (norms > 1.0 - 1e-4))
    assert feats.shape[1] <= 30


def test_boundary_rule_by_hand():
    # n = 5 frames into 4 cells: bounds min(round([0, 1.25, 2.5, 3.75, 5]), 4) = [0, 1, 2, 4, 4]
    x = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    out = average_to_fixed_length(x, 4)
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0, 2.5, 4.0])  # round-half-even at 2.5; last bin degenerate


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 128, 129, 500])
def test_lengths(n):
    raw = np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32)
    assert clip_grid(raw).shape == (32, 8)
    assert frame_sequence(raw).shape == (min(n, 128), 8)
    norms = np.linalg.norm(clip_grid(raw), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)


def test_l2_eps_and_truncation():
    x = np.zeros((40, 4), np.float32)
    x[0] = [3, 4, 0, 0]
    y = l2_normalize(x)
    np.testing.assert_allclose(y[0], np.array([3, 4, 0, 0]) / (5 + 1e-5), rtol=1e-7)
    assert np.all(y[1:] == 0)
    assert query_tokens(x).shape == (30, 4)
