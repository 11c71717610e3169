"""The model contract carries models whose video representation is not "clip cells + frames": here a model with
multi-scale clip proposals (MS-SL style: every span of 1-3 cells of an 8-cell grid) and several weighted query
rows, once scoring by max-similarity and once with an attention-pooled frame score that only `score` can compute.
Evaluation, index build, search, moments and the ANN stage handle both without a line of model-specific code."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prvr.config import LossConfig, ModelConfig, RunConfig
from prvr.data.layout import DatasetLayout
from prvr.eval.evaluator import evaluate
from prvr.index.ann import build_ann
from prvr.index.build import build_index
from prvr.index.search import Retriever
from prvr.models import registry
from prvr.models.base import ModelLoss, PRVRModel, QueryRepr, TokenLayout, TokenSet, VideoRepr
from prvr.models.checkpoint import save_checkpoint
from prvr.models.losses import info_nce

SPANS = tuple((a, a + n) for n in (1, 2, 3) for a in range(0, 8 - n + 1))  # 8 + 7 + 6 = 21 proposals


@dataclass
class ToyConfig(ModelConfig):
    name: ClassVar[str] = "toy-proposals"
    hidden_size: int = 16
    attention_frames: bool = False  # True: frame score = cos(q, attention-pooled frames), not a max-similarity


class ToyLoss(ModelLoss):
    def __call__(self, outputs, labels, step):
        q, v, model = outputs
        loss = info_nce(model.score(q, v), labels)
        return loss, {"nce": loss.detach()}


class ToyModel(PRVRModel):
    config_class = ToyConfig

    def __init__(self, cfg: ToyConfig):
        super().__init__(cfg)
        self.scores_by_max_similarity = not cfg.attention_frames
        self.video_proj = nn.Linear(cfg.visual_dim, cfg.hidden_size)
        self.query_proj = nn.Linear(cfg.text_dim, cfg.hidden_size)
        pool = torch.zeros(len(SPANS), cfg.map_size)
        for i, (a, b) in enumerate(SPANS):
            pool[i, a:b] = 1.0 / (b - a)
        self.register_buffer("pool", pool, persistent=False)  # (P, Kc)

    def token_layouts(self):
        return {"proposal": TokenLayout(self.cfg.map_size, proposals=SPANS),
                "frame": TokenLayout(self.cfg.max_ctx_l, ragged=True)}

    def score_weights(self):
        return {"proposal": 0.5, "frame": 0.5}

    def encode_videos(self, batch):
        cells = self.video_proj(batch.clip)  # (B, Kc, D)
        frames = self.video_proj(batch.frames) * batch.frame_mask[..., None]  # (B, F, D)
        return VideoRepr({"proposal": TokenSet(torch.einsum("pk,bkd->bpd", self.pool, cells)),
                          "frame": TokenSet(frames, batch.frame_mask)})

    def encode_queries(self, batch):
        tokens = self.query_proj(batch.text)  # (N, Lq, D)
        m = batch.text_mask[..., None]
        pooled = (tokens * m).sum(1) / m.sum(1)  # (N, D)
        vectors = torch.stack([pooled, tokens[:, 0], pooled], dim=1)  # (N, 3, D)
        weights = torch.tensor([1.0, 0.25, 0.75]).expand(len(pooled), 3)
        return QueryRepr(vectors, weights, ("proposal", "frame", "frame"))

    def set_scores(self, queries, videos):
        per_set = super().set_scores(queries, videos)
        if self.cfg.attention_frames:  # MS-SL-like: attention over a video's frames by the query, then cosine
            q, v = queries.normalize(), videos.normalize()
            f = v.sets["frame"]
            pooled_q = q.vectors[:, 2]  # (N, D)
            sims = torch.einsum("nd,bfd->nbf", pooled_q, f.tokens).masked_fill(f.mask[None] == 0, float("-inf"))
            att = (sims / 0.1).softmax(-1)
            ctx = F.normalize(torch.einsum("nbf,bfd->nbd", att, f.tokens), dim=-1)
            per_set["frame"] = torch.einsum("nd,nbd->nb", pooled_q, ctx)
        return per_set

    def forward_train(self, batch):
        return self.encode_queries(batch), self.encode_videos(batch), self


@pytest.fixture(params=[False, True], ids=["max-similarity", "model-score"])
def toy(request, monkeypatch, tiny_data, tmp_path):
    monkeypatch.setitem(registry._REGISTRY, "toy-proposals", registry.ModelEntry(
        "toy-proposals", "test double", ToyConfig, LossConfig, ToyModel, ToyLoss, presets="tests"))
    cfg = RunConfig(ToyConfig(visual_dim=48, text_dim=40, map_size=8, attention_frames=request.param), LossConfig())
    cfg.data.root = str(tiny_data)
    torch.manual_seed(0)
    model = registry.build_model(cfg.model).eval()
    ckpt = tmp_path / "toy.safetensors"
    save_checkpoint(ckpt, model, cfg)
    layout = DatasetLayout(tiny_data, "charades")
    index = tmp_path / "index"
    build_index(ckpt, layout, "test", index, shard_size=7, progress=False)
    return model, layout, index


def test_index_scores_what_the_model_scores(toy):
    model, layout, index = toy
    ev = evaluate(model, layout, "test", keep_scores=True)
    r = Retriever(index)
    assert r.exact_only == model.cfg.attention_frames and len(r.shards) > 1
    assert r.ids == ev.video_ids
    for qi in range(0, len(ev.query_ids), 5):
        hits = r.search_query_id(layout.root, ev.query_ids[qi], k=len(r))
        got = {h.video_id: h.score for h in hits}
        np.testing.assert_allclose([got[v] for v in ev.video_ids], ev.scores[qi], atol=2e-3)  # float16 tokens
        for h in hits[:3]:  # the moment is the best proposal's span: several cells for long proposals
            meta = r.video(h.video_id)
            a, b = SPANS[h.tokens["proposal"]]
            assert h.frames == r.layouts["proposal"].frame_rows(meta["n_raw_frames"], h.tokens["proposal"])
            assert h.end - h.start == pytest.approx((h.frames[1] - h.frames[0]) / meta["n_raw_frames"]
                                                    * meta["duration"])
            assert 0 <= a < b <= 8


def test_training_and_ann_through_the_contract(toy, tmp_path):
    model, layout, index = toy
    from prvr.models.presets import config_from_dict
    from prvr.train.loop import train

    cfg = config_from_dict({"model": {"name": "toy-proposals", **model.cfg.to_dict()},
                            "train": {"epochs": 1, "batch_videos": 8}, "data": {"root": str(layout.root)}})
    res = train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert res.epochs_run == 1 and res.best_metrics["SumR"] > 0
    if model.scores_by_max_similarity:
        meta = build_ann(index, nlist=4)
        assert meta["token_sets"] == ["proposal", "frame"]
        r = Retriever(index)
        tokens = r.query_features(layout.root, layout.caption_file("test").read_text().split()[0])
        exact = [h.video_id for h in r.search_tokens(tokens, 5, exact=True)]
        assert [h.video_id for h in r.search_tokens(tokens, 5)] == exact  # the whole tiny collection is a candidate
