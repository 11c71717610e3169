"""Exact search over an index: one query encoding, then the weighted max-similarity score against every video,
streamed shard by shard. Each hit carries its best moment (the best clip cell's time span) and best frame."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from prvr.config import RunConfig
from prvr.data.preprocess import cell_frames, query_tokens
from prvr.errors import PrvrError
from prvr.index.store import IndexError_, Shard, load_shard, read_manifest
from prvr.train.checkpoint import load_checkpoint

MAX_K = 1000
SCORE_CHUNK = 8192  # token rows converted to float32 at a time


class Scores(NamedTuple):
    clip: torch.Tensor  # (V,) max cosine over clip tokens
    frame: torch.Tensor  # (V,) max cosine over frame tokens
    cell: torch.Tensor  # (V,) argmax clip cell
    best_frame: torch.Tensor  # (V,) argmax frame token (row within the video)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A read-only memory map as a tensor, without a copy (nothing writes to it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


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
    def scores(self, q: torch.Tensor, videos: np.ndarray | None = None) -> Scores:
        """Normalised query (D,) -> clip-scale and frame-scale scores, with their best cell and frame, of all
        videos (or of the sorted global indices `videos`)."""
        parts = []
        for si, s in enumerate(self.shards):
            local = None if videos is None else videos[self._shard_of[videos] == si] - self._shard_base[si]
            if local is None or len(local):
                parts.append(self._score_shard(q, s, local))
        return Scores(*(torch.cat(p) for p in zip(*parts, strict=True)))

    def _token_sims(self, tokens: torch.Tensor, rows: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
        """q · tokens[rows] (all rows when None) for f16 tokens (N, D), converted to f32 chunk by chunk so the
        working set stays in cache and memory stays bounded."""
        n = len(tokens) if rows is None else len(rows)
        out = torch.empty(n, device=self.device)
        for a in range(0, n, SCORE_CHUNK):
            block = tokens[a:a + SCORE_CHUNK] if rows is None else tokens.index_select(0, rows[a:a + SCORE_CHUNK])
            torch.mv(block.to(self.device).float(), q, out=out[a:a + SCORE_CHUNK])
        return out

    def _score_shard(self, q: torch.Tensor, s: Shard, local: np.ndarray | None) -> Scores:
        n_all, Kc, D = s.clip.shape
        offsets, clip_rows, frame_rows = s.offsets, None, None  # offsets: frame rows of the scored videos
        if local is not None:
            starts, lengths = s.offsets[local], s.offsets[local + 1] - s.offsets[local]
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            clip_rows = torch.from_numpy((local[:, None] * Kc + np.arange(Kc)).reshape(-1))
            frame_rows = torch.from_numpy(np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1]))
        clip = self._token_sims(_tensor(s.clip).view(n_all * Kc, D), clip_rows, q).view(-1, Kc)  # (n, Kc)
        clip_score, cell = clip.max(dim=1)
        sims = self._token_sims(_tensor(s.frames), frame_rows, q)  # (total_frames,)
        lengths = torch.from_numpy(np.diff(offsets)).to(self.device)
        n = len(lengths)
        owner = torch.repeat_interleave(torch.arange(n, device=self.device), lengths)
        frame_score = torch.full((n,), float("-inf"), device=self.device).scatter_reduce(0, owner, sims, reduce="amax")
        # best frame: the first row of each video that reaches its maximum
        row_in_video = torch.arange(len(sims), device=self.device) - torch.from_numpy(offsets[:-1]).to(self.device)[owner]
        at_max = sims == frame_score[owner]
        frame = torch.full((n,), len(sims), device=self.device).scatter_reduce(
            0, owner[at_max], row_in_video[at_max], reduce="amin")
        frame = torch.where(lengths > 0, frame, 0)
        # the original's max also runs over zero-padded positions (cosine 0) when a video is short
        frame_score = torch.where(lengths < self.cfg.model.max_ctx_l, frame_score.clamp_min(0.0), frame_score)
        return Scores(clip_score, frame_score, cell, frame)

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
        sc = self.scores(q, videos)
        w_c, w_f = self.cfg.model.clip_scale_w, self.cfg.model.frame_scale_w
        total = w_c * sc.clip + w_f * sc.frame
        top = torch.topk(total, min(k, len(total))).indices
        glob = top.tolist() if videos is None else videos[top.cpu().numpy()].tolist()
        rows = zip(glob, total[top].tolist(), sc.clip[top].tolist(), sc.frame[top].tolist(), sc.cell[top].tolist(),
                   sc.best_frame[top].tolist(), strict=True)
        return [self._hit(*row) for row in rows]

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

    def _hit(self, i: int, score: float, clip_score: float, frame_score: float, cell: int, best: int) -> Hit:
        vid = self.ids[i]
        si, j = self._where[vid]
        meta = self.shards[si].meta[j]
        n = int(meta.get("n_raw_frames", 0))
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
