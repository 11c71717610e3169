"""Exact search over an index: one query encoding, then the weighted max-similarity score against every video,
streamed shard by shard. Each hit carries its best moment (the best clip cell's time span) and best frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from prvr.config import RunConfig
from prvr.data.preprocess import cell_frames, query_tokens
from prvr.errors import PrvrError
from prvr.index.store import IndexError_, Shard, load_shard, read_manifest
from prvr.train.checkpoint import load_checkpoint

MAX_K = 1000


@dataclass
class Hit:
    video_id: str
    score: float
    clip_score: float
    frame_score: float
    start: float | None  # seconds, best-matching clip cell (None when the duration is unknown)
    end: float | None
    frame_time: float | None  # seconds, best-matching frame
    cell: int  # best clip cell (0 .. map_size-1)
    frames: tuple[int, int]  # raw frame rows [lo, hi) of that cell

    def to_dict(self) -> dict:
        return asdict(self)


class Retriever:
    """`Retriever(INDEX).search("text", k)`; `search_tokens(features, k)`; `search_query_id(root, cap_id, k)`."""

    def __init__(self, index: str | Path, device: str | torch.device = "cpu"):
        self.path = Path(index)
        self.manifest = read_manifest(self.path)
        self.model, self.cfg, _ = load_checkpoint(self.path / "model.safetensors", device)
        self.device = torch.device(device)
        self.shards: list[Shard] = [load_shard(self.path / n) for n in self.manifest["shards"]]
        self.ids = [v for s in self.shards for v in s.ids]
        self._where = {v: (si, j) for si, s in enumerate(self.shards) for j, v in enumerate(s.ids)}
        self._text_encoder = None

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ queries
    def encode_text(self, text: str) -> np.ndarray:
        """Token features of free text, with the text encoder recorded in the index."""
        spec = self.manifest.get("text_encoder")
        if not spec:
            raise PrvrError(f"{self.path}: the index records no text encoder (its data was not made by `prvr extract "
                            "--text-encoder`); search it with --query-id")
        if self._text_encoder is None:
            from prvr.encode.encoders import load_text_encoder

            self._text_encoder = load_text_encoder(spec, self.device)
        return self._text_encoder.encode([text])[0]

    @torch.no_grad()
    def embed(self, tokens: np.ndarray) -> torch.Tensor:
        """(n_tokens, Dq) raw token features -> normalised query embedding (D,)."""
        tokens = np.asarray(tokens, dtype=np.float32)
        if tokens.ndim != 2 or tokens.shape[1] != self.cfg.model.text_dim or len(tokens) == 0:
            raise PrvrError(f"query features of shape {tokens.shape}, expected (n_tokens >= 1, {self.cfg.model.text_dim})")
        t = torch.from_numpy(query_tokens(tokens, self.cfg.model.max_desc_l))[None].to(self.device)
        q = self.model.encode_queries(t, torch.ones(t.shape[:2], device=self.device))
        return torch.nn.functional.normalize(q, dim=-1)[0]

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def scores(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised query (D,) -> clip-scale and frame-scale scores over all videos, each (V,)."""
        clip_s, frame_s = [], []
        F = self.cfg.model.max_ctx_l
        for s in self.shards:
            clip = torch.from_numpy(np.asarray(s.clip, dtype=np.float32)).to(self.device)  # (n, Kc, D)
            clip_s.append((clip @ q).amax(dim=1))
            frames = torch.from_numpy(np.asarray(s.frames, dtype=np.float32)).to(self.device)  # (total, D)
            lengths = torch.from_numpy(np.diff(s.offsets)).to(self.device)
            owner = torch.repeat_interleave(torch.arange(len(lengths), device=self.device), lengths)
            fs = torch.full((len(lengths),), float("-inf"), device=self.device)
            fs = fs.scatter_reduce(0, owner, frames @ q, reduce="amax")
            # the original's max also runs over zero-padded positions (cosine 0) when a video is short
            frame_s.append(torch.where(lengths < F, fs.clamp_min(0.0), fs))
        return torch.cat(clip_s), torch.cat(frame_s)

    def search_embedding(self, q: torch.Tensor, k: int = 10) -> list[Hit]:
        if not 1 <= k <= MAX_K:
            raise PrvrError(f"k={k}: expected 1 <= k <= {MAX_K}")
        if not self.ids:
            return []
        clip, frame = self.scores(q)
        w_c, w_f = self.cfg.model.clip_scale_w, self.cfg.model.frame_scale_w
        total = w_c * clip + w_f * frame
        top = torch.topk(total, min(k, len(total))).indices.tolist()
        return [self._hit(i, q, float(total[i]), float(clip[i]), float(frame[i])) for i in top]

    def search_tokens(self, tokens: np.ndarray, k: int = 10) -> list[Hit]:
        return self.search_embedding(self.embed(tokens), k)

    def search(self, text: str, k: int = 10) -> list[Hit]:
        """Free-text search."""
        text = text.strip()
        if not text:
            raise PrvrError("empty query")
        if len(text) > 1000:
            raise PrvrError(f"query of {len(text)} characters, expected at most 1000")
        return self.search_tokens(self.encode_text(text), k)

    def search_query_id(self, data_root: str | Path, query_id: str, k: int = 10) -> list[Hit]:
        """Search with the precomputed token features of caption `query_id` of a dataset in the release layout."""
        from prvr.data.features import open_query_features
        from prvr.data.layout import DatasetLayout

        layout = DatasetLayout(data_root, self.cfg.data.collection, self.cfg.data.visual_feature)
        return self.search_tokens(open_query_features(layout).get(query_id), k)

    # ------------------------------------------------------------------ moments
    def video(self, video_id: str) -> dict:
        if video_id not in self._where:
            raise PrvrError(f"unknown video id {video_id!r} in {self.path}")
        si, j = self._where[video_id]
        return {"video_id": video_id, **self.shards[si].meta[j]}

    def _hit(self, i: int, q: torch.Tensor, score: float, clip_score: float, frame_score: float) -> Hit:
        vid = self.ids[i]
        si, j = self._where[vid]
        s = self.shards[si]
        meta = s.meta[j]
        n = int(meta.get("n_raw_frames", 0))
        cell = int(torch.from_numpy(np.asarray(s.clip[j], dtype=np.float32)).to(q.device).matmul(q).argmax())
        frames = torch.from_numpy(np.asarray(s.frames[s.offsets[j]:s.offsets[j + 1]], dtype=np.float32)).to(q.device)
        best = int((frames @ q).argmax()) if len(frames) else 0
        Kc, F = self.cfg.model.map_size, self.cfg.model.max_ctx_l
        lo, hi = cell_frames(n, Kc, cell) if n else (cell, cell + 1)
        f_lo, f_hi = (best, best + 1) if n <= F else cell_frames(n, F, best)
        start = end = frame_time = None
        duration = meta.get("duration")
        if duration and n:
            start, end = lo / n * duration, hi / n * duration
            frame_time = (f_lo + f_hi) / 2 / n * duration
            times = meta.get("frame_times")
            if times and len(times) == n and f_hi - f_lo == 1:
                frame_time = float(times[f_lo])
        return Hit(vid, score, clip_score, frame_score, start, end, frame_time, cell, (lo, hi))


def index_config(path: Path) -> RunConfig:
    return RunConfig.from_dict(read_manifest(path)["config"])


__all__ = ["Hit", "IndexError_", "Retriever", "index_config"]
