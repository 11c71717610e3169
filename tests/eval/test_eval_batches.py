"""Evaluation reads its videos in batches of the model's `inference_videos` (prvr.eval.evaluator.encode_videos):
the size of a batch, and so its padding, must not change any video's tokens."""

import numpy as np
import pytest
import torch

from prvr.data.datasets import Batch, pad_sequences
from prvr.data.preprocess import clip_grid, frame_sequence
from prvr.models import build_model
from prvr.models.base import VideoRepr
from prvr.models.presets import resolve


@pytest.mark.parametrize("name", ["hlformer", "holmes", "dreamprvr"])
def test_batch_size_and_padding_do_not_change_video_tokens(name):
    cfg = resolve(name, "tiny").model
    torch.manual_seed(0)
    model = build_model(cfg, "cpu").eval()
    rng = np.random.default_rng(0)
    videos = []
    for _ in range(20):  # 3 to 199 raw frames: batches of 8 pad to other lengths than one batch of 20
        raw = rng.standard_normal((int(rng.integers(3, 200)), cfg.visual_dim)).astype("float32")
        videos.append((clip_grid(raw), frame_sequence(raw)))

    def encode(batch: int) -> VideoRepr:
        parts = []
        for s in range(0, len(videos), batch):
            chunk = videos[s:s + batch]
            frames, mask = pad_sequences([f for _, f in chunk])
            clip = torch.from_numpy(np.stack([c for c, _ in chunk]))
            parts.append(model.encode_videos(Batch(clip=clip, frames=frames, frame_mask=mask)))
        return VideoRepr.cat(parts)

    with torch.no_grad():
        whole, eights = encode(20), encode(8)
    for k, s in whole.sets.items():
        assert torch.equal(s.tokens, eights.sets[k].tokens), k  # measured: identical


@pytest.mark.parametrize("name", ["hlformer", "holmes"])
def test_encoding_in_chunks_of_videos_equals_one_pass(name, monkeypatch):
    """Evaluation encodes `inference_videos` videos at a time; the tokens are those of the whole batch."""
    cfg = resolve(name, "tiny").model
    torch.manual_seed(0)
    model = build_model(cfg, "cpu").eval()
    rng = np.random.default_rng(1)
    videos = [rng.standard_normal((n, cfg.visual_dim)).astype("float32") for n in (5, 40, 128, 7, 60)]
    frames, mask = pad_sequences([frame_sequence(v) for v in videos])
    b = Batch(clip=torch.from_numpy(np.stack([clip_grid(v) for v in videos])), frames=frames, frame_mask=mask)
    with torch.no_grad():
        monkeypatch.setattr(type(model), "inference_videos", 2)  # chunks of 2, 2, 1
        chunked = model.encode_videos(b)
        monkeypatch.setattr(type(model), "inference_videos", 0)
        whole = model.encode_videos(b)
    for k, s in whole.sets.items():
        torch.testing.assert_close(chunked.sets[k].tokens, s.tokens, atol=1e-6, rtol=0)
        assert (s.mask is None) == (chunked.sets[k].mask is None)
        if s.mask is not None:
            assert torch.equal(chunked.sets[k].mask, s.mask)
