"""DreamPRVR: imagine global registers (video-centric Gaussian + truncated diffusion), then concentrate through
register-augmented Gaussian attention at clip and frame scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prvr.models.base import per_item_normal
from prvr.models.dreamprvr.config import DreamPRVRConfig
from prvr.models.dreamprvr.diffusion import Denoiser, DiffusionSchedule
from prvr.models.dreamprvr.registers import RegisterCondition, RegisterGaussianAttention
from prvr.models.dreamprvr.samplers import TextPerturbationSampler, VideoSampler, sinusoidal_table
from prvr.models.family import ClipFrameModel, init_family_weights
from prvr.models.layers import AttentionBlock, PositionalEncoding, Projection
from prvr.models.losses import segment_mean


@dataclass
class TrainOutputs:
    query: torch.Tensor  # (N, D) second query pass, used by the scores
    query_first: torch.Tensor  # (N, D) first pass: text means and the textual structure losses
    clip: torch.Tensor  # (B, Kc, D) clip-scale video tokens
    frame: torch.Tensor  # (B, F, D) frame-scale video tokens, zero at padded positions
    frame_mask: torch.Tensor  # (B, F)
    mu: torch.Tensor | None = None  # (B, D)
    logvar: torch.Tensor | None = None  # (B, D)
    eps_pred: torch.Tensor | None = None  # (T, B, K, D)
    eps_true: torch.Tensor | None = None  # (B, K, D)

    # what distributed training gathers across processes: field -> (videos | queries, batch dimension)
    batch_dims: ClassVar[dict[str, tuple[str, int]]] = {
        "query": ("queries", 0), "query_first": ("queries", 0), "clip": ("videos", 0), "frame": ("videos", 0),
        "frame_mask": ("videos", 0), "mu": ("videos", 0), "logvar": ("videos", 0), "eps_pred": ("videos", 1),
        "eps_true": ("videos", 0)}




class DreamPRVR(ClipFrameModel):
    config_class = DreamPRVRConfig
    cfg: DreamPRVRConfig

    def __init__(self, cfg: DreamPRVRConfig):
        super().__init__(cfg)
        D, h, p_in, p = cfg.hidden_size, cfg.n_heads, cfg.input_drop, cfg.drop
        self.build_query_branch()
        # video inputs
        self.clip_proj = Projection(cfg.visual_dim, D, p_in)
        self.clip_pos = PositionalEncoding(cfg.clip_pos_len, D, p_in)
        self.frame_proj = Projection(cfg.visual_dim, D, p_in)
        self.frame_pos = PositionalEncoding(cfg.max_ctx_l, D, p_in)
        # imagination: registers
        if cfg.use_registers:
            self.mean_clip_encoder = AttentionBlock(D, h, p)
            self.register_condition = RegisterCondition(cfg.num_registers, D, h, p)
            self.video_sampler = VideoSampler(D)
            self.text_perturbation = TextPerturbationSampler(cfg.num_registers, cfg.perturbation_scale)
            if cfg.use_diffusion:
                self.denoiser = Denoiser(D, cfg.timesteps, cfg.num_diffusion_layers)
                self.diffusion = DiffusionSchedule(cfg.timesteps)
        # concentration: register-augmented Gaussian attention per scale
        branch = dict(n_heads=h, dropout=p, attention_num=cfg.attention_num, temperature=cfg.sft_factor,
                      use_registers=cfg.use_registers)
        self.clip_branch = RegisterGaussianAttention(D, cfg.map_size, **branch)
        self.frame_branch = RegisterGaussianAttention(D, cfg.max_ctx_l, **branch)
        self.reset_parameters()

    def set_recompute(self, videos: int) -> None:
        """Trade compute for memory in training: recompute the branch banks' activations in the backward pass,
        `videos` videos at a time (0: keep them; a freshly built model keeps them, training sets
        `train.recompute_videos`). Results are unchanged."""
        self.clip_branch.recompute_videos = self.frame_branch.recompute_videos = max(0, int(videos))

    # ---------------------------------------------------------------- init
    def reset_parameters(self) -> None:
        """Linear/Embedding N(0, 0.02), biases 0, LayerNorm 1/0; the GRU keeps xavier/orthogonal/zero;
        register queries keep N(0, 1). Applied over the whole model, as in the original."""
        init_family_weights(self, self.cfg.initializer_range)
        for m in self.modules():
            if isinstance(m, nn.GRU):
                for name, w in m.named_parameters():
                    if "weight_ih" in name:
                        nn.init.xavier_uniform_(w)
                    elif "weight_hh" in name:
                        nn.init.orthogonal_(w)
                    else:
                        nn.init.zeros_(w)
        if self.cfg.use_registers and self.cfg.use_diffusion and self.cfg.sinusoidal_time_embedding:
            table = self.denoiser.time_embed.table.weight
            with torch.no_grad():
                table.copy_(sinusoidal_table(*table.shape))

    # ---------------------------------------------------------------- the contract
    def forward_train(self, batch, draws: dict[str, torch.Tensor] | None = None) -> TrainOutputs:
        """`draws` (see `TrainStep.draws`): the perturbation draws `perturbation_alpha`/`perturbation_beta`
        (B, K, D) to use instead of drawing them."""
        perturbation = None
        if draws is not None and "perturbation_alpha" in draws:
            perturbation = (draws["perturbation_alpha"], draws["perturbation_beta"])
        return self(batch.clip, batch.frames, batch.frame_mask, batch.text, batch.text_mask, batch.labels,
                    perturbation=perturbation)

    # ---------------------------------------------------------------- query side
    # ---------------------------------------------------------------- video side
    def _register_inputs(self, clip_tokens: torch.Tensor):
        encoded = self.mean_clip_encoder(clip_tokens)  # (B, Kc, D)
        cond = self.register_condition(encoded)  # (B, K, D)
        mu, logvar = self.video_sampler(encoded)  # (B, D) each
        return cond, mu, logvar

    def _start_noise(self, mu: torch.Tensor) -> torch.Tensor:
        """The video-centric start: mu repeated K times (the original's deterministic draw)."""
        K = self.cfg.num_registers
        if self.cfg.video_centric_init:
            return mu[:, None].expand(-1, K, -1)  # (B, K, D)
        if self.training:
            return per_item_normal("videos", mu.shape[0], K, mu.shape[1], device=mu.device, dtype=mu.dtype)
        return mu.new_zeros(mu.shape[0], K, mu.shape[1])

    def generate_registers(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Truncated reverse diffusion from `noise` (B, K, D), conditioned on C -> registers (B, K, D)."""
        if not self.cfg.use_diffusion:
            return cond
        x = noise
        B = x.shape[0]
        for t in reversed(range(self.cfg.timesteps)):
            tt = torch.full((B,), t, device=x.device, dtype=torch.long)
            x = self.diffusion.step(x, self.denoiser(x, tt, cond), t, noise)
        return x

    def _encode_tokens(self, clip_tokens, frames, frame_mask, registers):
        clip_out = self.clip_branch(clip_tokens, registers)  # (B, Kc, D)
        frame_tokens = self.frame_pos(self.frame_proj(frames))  # (B, F, D)
        frame_out = self.frame_branch(frame_tokens, registers, frame_mask) * frame_mask[..., None]
        return clip_out, frame_out, frame_mask

    def video_tokens(self, clip: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor):
        """Inference path: clip (B, Kc, Dv), frames (B, F<=128, Dv), frame_mask (B, F)
        -> clip tokens (B, Kc, D), frame tokens (B, max_ctx_l, D) zero at padding, frame mask (B, max_ctx_l)."""
        frames, frame_mask = self.pad_frames(frames, frame_mask)
        clip_tokens = self.clip_pos(self.clip_proj(clip))  # (B, Kc, D)
        registers = None
        if self.cfg.use_registers:
            cond, mu, _ = self._register_inputs(clip_tokens)
            registers = self.generate_registers(cond, self._start_noise(mu))
        return self._encode_tokens(clip_tokens, frames, frame_mask, registers)

    # ---------------------------------------------------------------- training
    def forward(self, clip, frames, frame_mask, text, text_mask, labels,
                perturbation: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainOutputs:
        """Training pass: all the tensors the losses need. The original encodes the queries twice (different
        dropout masks); `single_query_pass=True` reuses the first pass. `perturbation`: (alpha, beta) draws of
        the textual perturbation sampler, (B, K, D) each, instead of drawing them."""
        B = clip.shape[0]
        query_first = self.query_embedding(text, text_mask)  # (N, D)
        frames, frame_mask = self.pad_frames(frames, frame_mask)
        clip_tokens = self.clip_pos(self.clip_proj(clip))  # (B, Kc, D)
        out = {}
        registers = None
        if self.cfg.use_registers:
            cond, mu, logvar = self._register_inputs(clip_tokens)
            noise = self._start_noise(mu)  # (B, K, D)
            out.update(mu=mu, logvar=logvar)
            if self.cfg.use_diffusion:
                x0 = self.text_perturbation(segment_mean(query_first, labels, B), draws=perturbation)  # (B, K, D)
                x_t = self.diffusion.q_sample(x0, noise)  # (T, B, K, D)
                T = x_t.shape[0]
                steps = torch.arange(T, device=clip.device).repeat_interleave(B)  # (T*B,)
                eps = self.denoiser(x_t.flatten(0, 1), steps, cond.repeat(T, 1, 1))
                out.update(eps_pred=eps.view(T, B, *eps.shape[1:]), eps_true=noise)
            registers = self.generate_registers(cond, noise)
        clip_out, frame_out, frame_mask = self._encode_tokens(clip_tokens, frames, frame_mask, registers)
        query = query_first if self.cfg.single_query_pass else self.query_embedding(text, text_mask)
        return TrainOutputs(query, query_first, clip_out, frame_out, frame_mask, **out)
