"""The training-free `maxsim` model: in a text-aligned space it has nothing to learn but the loss temperature, and
its score is the clip-cell + frame max-similarity of the input vectors."""

import torch
import torch.nn.functional as F

from prvr.data.datasets import Batch
from prvr.models import build_loss, build_model
from prvr.models.base import TrainStep
from prvr.models.presets import default_config


def test_aligned_space_has_no_weights_and_scores_max_similarity():
    cfg = default_config("maxsim")
    cfg.model.visual_dim = cfg.model.text_dim = 16
    model = build_model(cfg.model)
    assert [n for n, _ in model.named_parameters()] == ["logit_scale"] and model.training_free
    g = torch.Generator().manual_seed(0)
    clip = F.normalize(torch.randn(4, 32, 16, generator=g), dim=-1)
    frames = F.normalize(torch.randn(4, 9, 16, generator=g), dim=-1)
    mask = torch.ones(4, 9)
    mask[1, 5:] = 0
    text = torch.randn(3, 1, 16, generator=g)
    b = Batch(clip=clip, frames=frames, frame_mask=mask, text=text, text_mask=torch.ones(3, 1),
              labels=torch.tensor([0, 1, 2]))
    score = model.score(model.encode_queries(b), model.encode_videos(b))
    q = F.normalize(text[:, 0], dim=-1)
    framesims = torch.einsum("nd,bfd->nbf", q, frames).masked_fill(mask[None] == 0, -2)
    want = 0.5 * torch.einsum("nd,bcd->nbc", q, clip).amax(-1) + 0.5 * framesims.amax(-1)
    torch.testing.assert_close(score, want, atol=1e-6, rtol=0)

    # a training step moves only the temperature: the ranking cannot change
    loss = build_loss(cfg.loss, cfg.model)
    total, terms = loss(model.forward_train(b), b.labels, TrainStep())
    total.backward()
    assert set(terms) == {"nce"} and model.logit_scale.grad is not None


def test_different_widths_learn_a_linear_map():
    cfg = default_config("maxsim")
    cfg.model.visual_dim, cfg.model.text_dim = 12, 8
    model = build_model(cfg.model)
    assert not model.training_free and model.query_map.weight.shape == (12, 8)
