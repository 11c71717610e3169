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
        sizes = [len(s.ids) for s in self.shards]
        self._shard_of = np.repeat(np.arange(len(sizes)), sizes)  # global video index -> shard
        self._shard_base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0)
        self.ann = None
        if (self.path / "ann.faiss").exists():
            from prvr.index.ann import ClipTokenANN

            ann = ClipTokenANN(self.path)
            self.ann = ann if ann.covers(self.manifest) else None  # stale after `index add`: exact until rebuilt
        self._text_encoder = None

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ queries
    def encode_text(self, text: str) -> np.ndarray:
        """Token features of free text, with the text encoder recorded in the index."""
        text = text.strip()
        if not text:
            raise PrvrError("empty query")
        if len(text) > 1000:
            raise PrvrError(f"query of {len(text)} characters, expected at most 1000")
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
    def scores(self, q: torch.Tensor, videos: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised query (D,) -> clip-scale and frame-scale scores of all videos (or of the sorted global
        indices `videos`), each (V,)."""
        clip_s, frame_s = [], []
        for si, s in enumerate(self.shards):
            if videos is None:
                clip, frames, lengths = s.clip, s.frames, np.diff(s.offsets)
            else:
                local = videos[self._shard_of[videos] == si] - self._shard_base[si]
                if len(local) == 0:
                    continue
                clip = s.clip[local]
                frames = np.concatenate([s.frames[s.offsets[j]:s.offsets[j + 1]] for j in local])
                lengths = s.offsets[local + 1] - s.offsets[local]
            c, f = self._score_block(q, clip, frames, lengths)
            clip_s.append(c)
            frame_s.append(f)
        return torch.cat(clip_s), torch.cat(frame_s)

    def _score_block(self, q: torch.Tensor, clip: np.ndarray, frames: np.ndarray, lengths: np.ndarray):
        clip = torch.from_numpy(np.array(clip, dtype=np.float16)).to(self.device).float()  # (n, Kc, D)
        frames = torch.from_numpy(np.array(frames, dtype=np.float16)).to(self.device).float()  # (total, D)
        lengths = torch.from_numpy(np.asarray(lengths)).to(self.device)
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=self.device), lengths)
        fs = torch.full((len(lengths),), float("-inf"), device=self.device).scatter_reduce(
            0, owner, frames @ q, reduce="amax")
        # the original's max also runs over zero-padded positions (cosine 0) when a video is short
        fs = torch.where(lengths < self.cfg.model.max_ctx_l, fs.clamp_min(0.0), fs)
        return (clip @ q).amax(dim=1), fs

    def search_embedding(self, q: torch.Tensor, k: int = 10, exact: bool | None = None,
                         candidate_tokens: int = 4096, candidate_videos: int = 1000) -> list[Hit]:
        """Top-k videos for a normalised query embedding. With an ANN built (`prvr index ann`) and exact not
        forced, stage 1 takes the best `candidate_videos` among the videos of the `candidate_tokens` nearest
        clip tokens, stage 2 re-ranks them exactly; otherwise every video is scored."""
        if not 1 <= k <= MAX_K:
            raise PrvrError(f"k={k}: expected 1 <= k <= {MAX_K}")
        if not self.ids:
            return []
        videos = None
        if not exact and self.ann is not None:
            videos = self.ann.candidates(q.cpu().numpy(), max(candidate_tokens, k), max(candidate_videos, k))
            if len(videos) < k:
                videos = None
        clip, frame = self.scores(q, videos)
        w_c, w_f = self.cfg.model.clip_scale_w, self.cfg.model.frame_scale_w
        total = w_c * clip + w_f * frame
        top = torch.topk(total, min(k, len(total))).indices.tolist()
        glob = top if videos is None else videos[top].tolist()
        return [self._hit(g, q, float(total[i]), float(clip[i]), float(frame[i])) for i, g in zip(top, glob, strict=True)]

    def search_tokens(self, tokens: np.ndarray, k: int = 10, exact: bool | None = None) -> list[Hit]:
        return self.search_embedding(self.embed(tokens), k, exact)

    def search(self, text: str, k: int = 10, exact: bool | None = None) -> list[Hit]:
        """Free-text search."""
        return self.search_tokens(self.encode_text(text), k, exact)

    def query_features(self, data_root: str | Path, query_id: str) -> np.ndarray:
        """The precomputed token features of caption `query_id` of a dataset in the release layout."""
        from prvr.data.features import open_query_features
        from prvr.data.layout import DatasetLayout

        layout = DatasetLayout(data_root, self.cfg.data.collection, self.cfg.data.visual_feature)
        return open_query_features(layout).get(query_id)

    def search_query_id(self, data_root: str | Path, query_id: str, k: int = 10, exact: bool | None = None) -> list[Hit]:
        return self.search_tokens(self.query_features(data_root, query_id), k, exact)

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
