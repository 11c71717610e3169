"""What the MS-SL / GMMFormer family's models share (DreamPRVR, HLFormer, Holmes): the query branch (projection,
positions, one attention block, attention pooling), two token sets (the clip-cell grid and the frames) scored as
w_c max cos(q, clips) + w_f max cos(q, frames), and the authors' initialisation. Each model subclasses
`ClipFrameModel` and keeps its own video branches; attribute names are the state-dict names the converters use."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from prvr.models.base import PRVRModel, QueryRepr, TokenLayout, TokenSet, VideoRepr, pad_frames
from prvr.models.layers import AttentionBlock, PositionalEncoding, Projection

SETS = ("clip", "frame")


def init_family_weights(model: nn.Module, std: float) -> None:
    """Linear/Embedding weights N(0, std), Linear biases 0, LayerNorm 1/0, over every module in registration order
    (the order the authors' init draws in)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ClipFrameModel(PRVRModel):
    """A model with the family's query branch and clip + frame token sets. Subclasses call `build_query_branch`
    in `__init__` where the original creates it (module order sets the init draws) and provide `video_tokens`."""

    recompute_queries: bool = False  # training: recompute the query branch in backward instead of keeping it

    def build_query_branch(self) -> None:
        c = self.cfg
        D = c.hidden_size
        self.query_proj = Projection(c.text_dim, D, c.input_drop)
        self.query_pos = PositionalEncoding(c.max_desc_l, D, c.input_drop)
        self.query_encoder = AttentionBlock(D, c.n_heads, c.drop)
        self.query_pooling = nn.Linear(D, 1, bias=False)

    def query_embedding(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """text (N, Lq, Dq), text_mask (N, Lq) -> query embedding (N, D): masked attention pooling of the tokens.
        With `recompute_queries` (set by a model's `set_recompute`) in training, the branch keeps only its input
        and output and is run again in the backward pass (same dropout masks: the RNG state is replayed): its
        activations are (N, Lq, 4 D)-sized, ~0.45 GB a pass for 330 captions of 30 tokens."""
        if self.recompute_queries and torch.is_grad_enabled():
            return checkpoint(self._query_embedding, text, text_mask, use_reentrant=False)
        return self._query_embedding(text, text_mask)

    def _query_embedding(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        x = self.query_encoder(self.query_pos(self.query_proj(text)), key_mask=text_mask)  # (N, Lq, D)
        logits = self.query_pooling(x).squeeze(-1)  # (N, Lq)
        logits = logits * text_mask + (1 - text_mask) * -1e10
        return torch.einsum("nl,nld->nd", logits.softmax(dim=-1), x)

    def pad_frames(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded to max_ctx_l positions: the frame branch has one fusion logit per position, so it always sees
        max_ctx_l of them."""
        return pad_frames(frames, frame_mask, self.cfg.max_ctx_l)

    def video_tokens(self, clip: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor):
        """-> clip tokens (B, Kc, D), frame tokens (B, F, D), frame mask (B, F)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the contract
    def token_layouts(self) -> dict[str, TokenLayout]:
        return {"clip": TokenLayout(self.cfg.map_size),
                "frame": TokenLayout(self.cfg.max_ctx_l, ragged=True, pads_score_zero=True)}

    def score_weights(self) -> dict[str, float]:
        return {"clip": self.cfg.clip_scale_w, "frame": self.cfg.frame_scale_w}

    def encode_queries(self, batch) -> QueryRepr:
        return QueryRepr.single(self.query_embedding(batch.text, batch.text_mask), SETS)

    def encode_videos(self, batch) -> VideoRepr:
        """Without autograd and with `inference_videos` > 0, `inference_videos` videos at a time: the activations
        of the projections and the branch banks (A x the tokens, 4 A x in the feed-forward, the fusion's keys and
        values: ~2.4 MB a video per branch at 128 frames) then exist for so many videos, not a whole batch. Each
        video is encoded alone (no draws at inference), so the chunks change nothing."""
        n = self.inference_videos
        if not n or torch.is_grad_enabled() or len(batch.clip) <= n:
            return self._encode_videos(batch.clip, batch.frames, batch.frame_mask)
        return VideoRepr.collect((self._encode_videos(batch.clip[a:a + n], batch.frames[a:a + n],
                                                      batch.frame_mask[a:a + n])
                                  for a in range(0, len(batch.clip), n)), len(batch.clip))

    def _encode_videos(self, clip: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor) -> VideoRepr:
        clip, frame, frame_mask = self.video_tokens(clip, frames, frame_mask)
        return VideoRepr({"clip": TokenSet(clip), "frame": TokenSet(frame, frame_mask)})
