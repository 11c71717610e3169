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


def test_query_tokens_give_the_golden_inputs(golden):
    """query_tokens on raw token features gives the golden query inputs: x / (||x|| + 1e-5), first 30 tokens.
    The raw features are the golden tokens at RoBERTa-like norms, followed by extra tokens past the cut."""
    z, _ = golden
    feats, mask = z["input/query_feat"], z["input/query_mask"]
    rng = np.random.default_rng(0)
    for i in range(len(feats)):
        n = int(mask[i].sum())
        g = feats[i, :n]
        r = rng.uniform(5.0, 20.0, (n, 1)).astype(np.float32)
        raw = np.concatenate([g / np.linalg.norm(g, axis=1, keepdims=True) * r,
                              rng.standard_normal((40 - n, g.shape[1])).astype(np.float32)])
        out = query_tokens(raw)
        assert out.shape == (30, g.shape[1]) and out.dtype == np.float32
        np.testing.assert_allclose(out[:n], g, atol=1e-6, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(raw[:30], axis=1)
                                   / (np.linalg.norm(raw[:30], axis=1) + 1e-5), rtol=1e-6)


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


def test_outputs_are_float32_whatever_the_input_dtype():
    raw = np.random.default_rng(3).standard_normal((40, 6))  # float64, as a reader may hand it over
    for x in (raw, raw.tolist(), np.round(raw * 10).astype(np.int64)):
        assert l2_normalize(x).dtype == np.float32
        assert average_to_fixed_length(x, 8).dtype == np.float32
        assert clip_grid(x).dtype == np.float32 and frame_sequence(x).dtype == np.float32


def test_float64_frames_are_read_as_float32():
    """The protocol's features are float32: frames handed over in float64 pool to exactly the cells of their float32
    rounding (averaging the float64 values and rounding after differs in the last bit of some cells)."""
    raw = np.random.default_rng(4).standard_normal((100, 16))
    out = average_to_fixed_length(raw, 32)
    assert np.array_equal(out, average_to_fixed_length(raw.astype(np.float32), 32))
    assert np.array_equal(l2_normalize(raw), l2_normalize(raw.astype(np.float32)))


def test_l2_normalize_works_on_the_last_axis():
    np.testing.assert_allclose(l2_normalize(np.array([3.0, 4.0])), np.array([3, 4]) / (5 + 1e-5), rtol=1e-7)
    x = np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32)  # (B, L, D): every token
    want = x / (np.sqrt((x.astype(np.float64) ** 2).sum(-1, keepdims=True)) + 1e-5)
    np.testing.assert_allclose(l2_normalize(x), want, rtol=1e-6)


def test_cells_are_means_in_double_precision():
    """A long video with a large common offset: the running sum of 1,000 frames reaches 1e7, where float32 keeps
    1 unit in the last place; the cells must still be the mean of their rows (summed in float64)."""
    rng = np.random.default_rng(6)
    x = (1e4 + rng.standard_normal((1000, 4))).astype(np.float32)
    out = average_to_fixed_length(x, 32)
    b = np.minimum(np.round(np.arange(33) * 1000 / 32), 999).astype(int)
    want = np.stack([x[b[i]:b[i + 1]].astype(np.float64).mean(0) for i in range(32)])
    np.testing.assert_allclose(out, want, rtol=1e-7, atol=0)  # float32 rounding of 1e4: 4.9e-4 = 4.9e-8 relative


def test_a_cell_of_one_frame_is_that_frame():
    """As the release (torch.mean over one row): a cell of one frame is the frame bit for bit, also where the
    difference of two running sums would round it (a tiny component after large ones)."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((128, 64)) * 10).astype(np.float32)
    x[::2] *= 1e-6
    assert np.array_equal(average_to_fixed_length(x, 128), x)  # 128 frames into 128 cells: each its frame
    assert np.array_equal(frame_sequence(x), l2_normalize(x))
    y = x[:20]
    out = average_to_fixed_length(y, 32)  # 20 frames into 32 cells: every cell holds one frame, or none
    b = np.minimum(np.round(np.arange(33) * 20 / 32), 19).astype(int)
    assert np.array_equal(out, y[b[:-1]])
