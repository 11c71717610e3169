"""Search over an index: one query encoding, then the model's weighted max-similarity score against every video
(or against the candidates of the ANN stage), streamed shard by shard. Each hit carries its best moment (the
time span of the best token of the model's moment set) and its best frame.

The score is the model's own: sum over token sets s and query rows m (aimed at s) of
max_l <w_s a_m q_m, token_{s,l}> with normalised rows and tokens, i.e. exactly `model.score`, to float16
precision. A model that does not score by max-similarity is scored by `model.score` on the stored tokens.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from prvr.data.datasets import Batch
from prvr.data.preprocess import query_tokens
from prvr.errors import PrvrError
from prvr.index.store import IndexError_, Shard, ShardTokens, layouts_of, load_shard, read_manifest
from prvr.index.store import tensor_view as _tensor
from prvr.models.base import QueryRepr, TokenLayout, TokenSet, VideoRepr
from prvr.models.checkpoint import load_checkpoint

MAX_K = 1000
MAX_QUERY_CHARS = 1000
SCORE_CHUNK = 8192  # token rows converted to float32 at a time
EXACT_CHUNK = 1024  # videos scored at a time through model.score
MOMENTS = 3  # distinct moments listed per hit
MOMENT_HITS = 50  # hits (best first) that get their moments listed


def check_query_text(text: str) -> str:
    """A free-text query as it enters: stripped, non-empty, at most MAX_QUERY_CHARS characters."""
    text = text.strip()
    if not text:
        raise PrvrError("empty query")
    if len(text) > MAX_QUERY_CHARS:
        raise PrvrError(f"query of {len(text)} characters, expected at most {MAX_QUERY_CHARS}")
    return text


class Scores(NamedTuple):
    total: torch.Tensor  # (V,) the retrieval score
    sets: dict[str, torch.Tensor]  # per token set, its weighted contribution (V,)
    tokens: dict[str, torch.Tensor]  # per token set, the best token (V,)


@dataclass
class Hit:
    video_id: str
    score: float
    set_scores: dict[str, float]  # each token set's weighted contribution to the score
    tokens: dict[str, int]  # the best token of each set
    start: float | None  # seconds: the moment (best token of the moment set); None when the duration is unknown
    end: float | None
    frame_time: float | None  # seconds, best-matching frame
    frames: tuple[int, int]  # raw frame rows [lo, hi) of the moment
    frame: int | None = None  # raw frame row of the best-matching frame (its thumbnail, when the index has them)
    # the best few distinct (neither overlapping nor touching) moments of the video, best first; the first is the
    # hit's own: {start, end, score, frame, frame_time}
    moments: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Retriever:
    """`Retriever(INDEX).search("text", k)`; `search_tokens(features, k)`; `search_query_id(root, cap_id, k)`."""

    def __init__(self, index: str | Path, device: str | torch.device = "cpu"):
        self.path = Path(index)
        self.manifest = read_manifest(self.path)
        self.model, self.cfg, _ = load_checkpoint(self.path / "model.safetensors", device)
        self.device = torch.device(device)
        self.layouts: dict[str, TokenLayout] = layouts_of(self.manifest)
        self.weights = {k: float(v) for k, v in self.manifest["score_weights"].items()}
        self.exact_only = not self.manifest.get("normalized", True)  # the model scores through model.score
        self.shards: list[Shard] = [load_shard(self.path / n, list(self.layouts), self.layouts)
                                    for n in self.manifest["shards"]]
        self.ids = [v for s in self.shards for v in s.ids]
        self._where = {v: (si, j) for si, s in enumerate(self.shards) for j, v in enumerate(s.ids)}
        if len(self._where) != len(self.ids):
            raise IndexError_(f"{self.path / 'manifest.json'}: a video id is stored in two shards")
        self._check_token_width()
        sizes = [len(s.ids) for s in self.shards]
        self._shard_of = np.repeat(np.arange(len(sizes)), sizes)  # global video index -> shard
        self._shard_base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0)
        fixed = [n for n, lay in self.layouts.items() if not lay.ragged]
        ragged = [n for n, lay in self.layouts.items() if lay.ragged]
        self.moment_set = (fixed or ragged)[0]  # the span of a hit comes from this set's best token
        self.frame_set = ragged[0] if ragged else None  # the best frame from this one
        self.ann = None
        if (self.path / "ann.faiss").exists() and not self.exact_only:
            from prvr.index.ann import TokenANN

            ann = TokenANN(self.path, self.weights, self.shards)
            self.ann = ann if ann.covers(self.manifest) else None  # stale after `index add`: exact until rebuilt
        self._text_encoder = None
        self._encoder_lock = threading.Lock()
        self.text_encoder_loads = 0

    def __len__(self) -> int:
        return len(self.ids)

    @torch.no_grad()
    def _check_token_width(self) -> None:
        """The stored tokens must have the width of the model's query vectors (else every search would fail)."""
        if not self.shards or self.exact_only:
            return
        mc = self.cfg.model
        q = self.model.encode_queries(Batch(text=torch.zeros(1, 1, mc.text_dim, device=self.device),
                                            text_mask=torch.ones(1, 1, device=self.device)))
        width = q.vectors.shape[-1]
        for s in self.shards:
            for name, st in s.sets.items():
                if st.tokens.shape[1] != width:
                    raise IndexError_(f"{s.path}: token set {name!r} is {st.tokens.shape[1]}-d, the index's model "
                                      f"makes {width}-d query vectors")

    # ------------------------------------------------------------------ queries
    def encode_text(self, text: str) -> np.ndarray:
        """Token features of free text, with the text encoder recorded in the index."""
        return self.encode_texts([text])[0]

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Token features of several free-text queries, encoded together (one batch through the encoder)."""
        texts = [check_query_text(t) for t in texts]
        return self.text_encoder().encode(texts)

    def check_query_encoder(self, spec: dict | None, what: str = "query encoder") -> None:
        """Refuse queries encoded otherwise than the index's own text encoder (their vectors would be compared
        with tokens of another space)."""
        from prvr.encode.encoders import same_encoder, spec_name

        mine = self.manifest.get("text_encoder")
        if spec is not None and mine is not None and not same_encoder(spec, mine):
            raise PrvrError(f"{self.path.name}: {what} {spec_name(spec)} differs from the index's "
                            f"{spec_name(mine)}; queries must be encoded with the encoder the index was built with")

    def text_encoder(self):
        """The text encoder recorded in the index, loaded once (thread-safe) and kept."""
        spec = self.manifest.get("text_encoder")
        if not spec:
            raise PrvrError(f"{self.path.name}: the index records no text encoder (its data was not made by `prvr "
                            "extract --text-encoder`); search it with --query-id")
        with self._encoder_lock:
            if self._text_encoder is None:
                from prvr.encode.encoders import load_text_encoder

                self._text_encoder = load_text_encoder(spec, self.device)
                self.text_encoder_loads += 1
        return self._text_encoder

    def _check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.float32)
        if tokens.ndim != 2 or tokens.shape[1] != self.cfg.model.text_dim or len(tokens) == 0:
            raise PrvrError(f"query features of shape {tokens.shape}, expected (n_tokens >= 1, {self.cfg.model.text_dim})")
        if not np.isfinite(tokens).all():
            raise PrvrError("query features contain NaN or Inf")
        return query_tokens(tokens, self.cfg.model.max_desc_l)

    @torch.no_grad()
    def embed(self, tokens: np.ndarray) -> QueryRepr:
        """(n_tokens, Dq) raw token features -> the model's normalised query representation of one query."""
        t = torch.from_numpy(self._check_tokens(tokens))[None].to(self.device)
        q = self.model.encode_queries(Batch(text=t, text_mask=torch.ones(t.shape[:2], device=self.device))).normalize()
        if not torch.isfinite(q.vectors).all():
            raise PrvrError("the model's query vectors are NaN or Inf")
        return q

    @torch.no_grad()
    def embed_many(self, tokens: list[np.ndarray]) -> QueryRepr:
        """Several queries' raw token features -> one normalised QueryRepr (N queries), encoded as one batch."""
        from prvr.data.datasets import pad_sequences

        text, mask = pad_sequences([self._check_tokens(t) for t in tokens])  # (N, L, Dq), (N, L)
        q = self.model.encode_queries(Batch(text=text.to(self.device), text_mask=mask.to(self.device))).normalize()
        if not torch.isfinite(q.vectors).all():
            raise PrvrError("the model's query vectors are NaN or Inf")
        return q

    def scaled_rows(self, q: QueryRepr) -> dict[str, torch.Tensor]:
        """Per token set, the query rows aimed at it scaled by w_s * a_m (M_s, D); zero-weight rows dropped."""
        out = {}
        for name in self.layouts:
            rows = q.rows_for(name)
            scale = self.weights.get(name, 0.0) * q.weights[0, rows]  # (M_s,)
            keep = scale > 0
            out[name] = (q.vectors[0, rows] * scale[:, None])[keep].float()
        return out

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def scores(self, q: QueryRepr, videos: np.ndarray | None = None) -> Scores:
        """Scores of all videos (or of the sorted global indices `videos`), with each set's best token."""
        rows = None if self.exact_only else self.scaled_rows(q)
        parts = []
        for si, s in enumerate(self.shards):
            local = None if videos is None else videos[self._shard_of[videos] == si] - self._shard_base[si]
            if local is None or len(local):
                parts.append(self._exact_shard(q, s, local) if rows is None else self._score_shard(rows, s, local))
        if not parts:
            return Scores(torch.zeros(0), {}, {})
        return Scores(torch.cat([p.total for p in parts]),
                      {n: torch.cat([p.sets[n] for p in parts]) for n in self.layouts},
                      {n: torch.cat([p.tokens[n] for p in parts]) for n in self.layouts})

    def _token_sims(self, tokens: torch.Tensor, rows: torch.Tensor | None, Q: torch.Tensor) -> torch.Tensor:
        """tokens[rows] @ Q.T (all rows when None) for f16 tokens (T, D) -> (T', M), converted to f32 chunk by
        chunk so the working set stays in cache and memory stays bounded."""
        n = len(tokens) if rows is None else len(rows)
        out = torch.empty(n, Q.shape[0], device=self.device)
        for a in range(0, n, SCORE_CHUNK):
            block = tokens[a:a + SCORE_CHUNK] if rows is None else tokens.index_select(0, rows[a:a + SCORE_CHUNK])
            block = block.to(self.device).float()
            if Q.shape[0] == 1:
                torch.mv(block, Q[0], out=out[a:a + SCORE_CHUNK, 0])
            else:
                torch.mm(block, Q.T, out=out[a:a + SCORE_CHUNK])
        return out

    def _set_scores(self, Q: torch.Tensor, st: ShardTokens, layout: TokenLayout, local: np.ndarray | None):
        """One token set of one shard: weighted score (n,) and best token (n,) of each scored video."""
        counts = st.counts if local is None else st.counts[local]
        n, M = len(counts), Q.shape[0]
        if M == 0:
            return torch.zeros(n, device=self.device), torch.zeros(n, dtype=torch.long, device=self.device)
        return self._set_of_rows(*self._row_best(Q, st, layout, local))

    @staticmethod
    def _set_of_rows(best: torch.Tensor, arg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per video, from its rows' best similarities and tokens (n, M), M >= 1: the set's score (the sum over the
        rows) and its best token (the one of the row that contributes most, which decides the moment)."""
        top = best.argmax(dim=1, keepdim=True)
        return best.sum(dim=1), arg.gather(1, top).squeeze(1)

    def _padded(self, best: torch.Tensor, counts: np.ndarray, layout: TokenLayout) -> torch.Tensor:
        """best (n, M) of videos with `counts` tokens: where the layout says so, the originals' max also runs over a
        short video's zeroed padding (cosine 0)."""
        if not layout.pads_score_zero:
            return best
        short = torch.from_numpy(counts < layout.capacity).to(self.device)[:, None]  # (n, 1)
        return torch.where(short, best.clamp_min(0.0), best)

    def _row_best(self, Q: torch.Tensor, st: ShardTokens, layout: TokenLayout, local: np.ndarray | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per scored video and query row: the best similarity (n, M) and the token that reaches it (n, M)."""
        counts = st.counts if local is None else st.counts[local]
        n, M = len(counts), Q.shape[0]
        rows = None
        if local is not None:  # the token rows of the scored videos, in order
            starts = st.offsets[local]
            first = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rows = torch.from_numpy(np.repeat(starts - first, counts) + np.arange(counts.sum()))
        sims = self._token_sims(_tensor(st.tokens), rows, Q)  # (T, M)
        if n and counts.min() == counts.max():  # the same number of tokens in every video: a reshape
            best, arg = sims.view(n, int(counts[0]), M).max(dim=1)  # (n, M) each
        else:
            cnt = torch.from_numpy(counts).to(self.device)
            owner = torch.repeat_interleave(torch.arange(n, device=self.device), cnt)[:, None].expand(-1, M)
            best = torch.full((n, M), float("-inf"), device=self.device).scatter_reduce(0, owner, sims, "amax")
            # best token: the first row of each video that reaches its maximum
            first = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]])).to(self.device)
            row_in_video = (torch.arange(len(sims), device=self.device) - first.repeat_interleave(cnt))[:, None]
            candidate = torch.where(sims == best.gather(0, owner), row_in_video, len(sims))
            arg = torch.full((n, M), len(sims), device=self.device).scatter_reduce(0, owner, candidate, "amin")
            arg = torch.where(arg >= len(sims), 0, arg)
        return self._padded(best, counts, layout), arg

    def _score_shard(self, rows: dict[str, torch.Tensor], s: Shard, local: np.ndarray | None) -> Scores:
        sets, tokens = {}, {}
        for name, layout in self.layouts.items():
            sets[name], tokens[name] = self._set_scores(rows[name], s.sets[name], layout, local)
        return Scores(sum(sets.values()), sets, tokens)

    def _exact_shard(self, q: QueryRepr, s: Shard, local: np.ndarray | None) -> Scores:
        """A model that does not score by max-similarity: its own `score` on the stored tokens, chunk by chunk."""
        idx = np.arange(len(s.ids)) if local is None else local
        totals, sets, tokens = [], {n: [] for n in self.layouts}, {n: [] for n in self.layouts}
        for a in range(0, len(idx), EXACT_CHUNK):
            v = self._video_repr(s, idx[a:a + EXACT_CHUNK])
            totals.append(self.model.score(q, v)[0])
            per_set, best = self.model.set_scores(q, v), self.model.best_tokens(q, v)
            for n in self.layouts:
                sets[n].append(self.weights.get(n, 0.0) * per_set[n][0])
                tokens[n].append(best[n][0])
        return Scores(torch.cat(totals), {n: torch.cat(x) for n, x in sets.items()},
                      {n: torch.cat(x) for n, x in tokens.items()})

    def _video_repr(self, s: Shard, idx: np.ndarray) -> VideoRepr:
        """Stored tokens of some videos of a shard, padded back to the model's (B, L, D) token sets."""
        sets = {}
        for name, layout in self.layouts.items():
            st = s.sets[name]
            counts = st.counts[idx]
            L = layout.capacity
            tok = torch.zeros(len(idx), L, st.tokens.shape[1], device=self.device)
            mask = torch.zeros(len(idx), L, device=self.device)
            for j, (i, c) in enumerate(zip(idx, counts, strict=True)):  # data assembly, not a forward pass
                tok[j, :c] = _tensor(st.tokens[st.offsets[i]:st.offsets[i] + c]).float()
                mask[j, :c] = 1
            sets[name] = TokenSet(tok, mask if layout.ragged else None)
        return VideoRepr(sets)

    def _lists_scores(self, q: QueryRepr, videos: np.ndarray, tokens: bool = False) -> Scores:
        """`scores` of some videos (sorted global indices) from stage 2's per-video lists (prvr.index.rerank): the
        same formula, each row's best token found by one FAISS scan over the videos' lists. Without `tokens` only
        the totals are filled in."""
        rows = self.scaled_rows(q)
        names = self.ann.names
        vectors = np.concatenate([rows[n].cpu().numpy() for n in names])  # (R, D) every live row, set by set
        sets = np.concatenate([np.full(len(rows[n]), i) for i, n in enumerate(names)])  # (R,)
        best, arg = self.ann.lists.best(vectors, sets, videos, tokens)  # (R, n) each
        best = torch.from_numpy(best).to(self.device)
        arg = torch.from_numpy(arg).to(self.device) if tokens else None
        n, per_set, best_token = len(videos), {}, {}
        for i, name in enumerate(names):
            mine = torch.from_numpy(sets == i)
            b = self._padded(best[mine].T, self.ann.lists.counts[i][videos], self.layouts[name])  # (n, M_s)
            if not b.shape[1]:  # no row aimed at this set
                per_set[name] = torch.zeros(n, device=self.device)
                if tokens:
                    best_token[name] = torch.zeros(n, dtype=torch.long, device=self.device)
            elif tokens:
                per_set[name], best_token[name] = self._set_of_rows(b, arg[mine].T)
            else:
                per_set[name] = b.sum(dim=1)
        total = sum(per_set.values())
        if not torch.isfinite(total).all():  # a NaN is never "lower": it must not decide which videos are kept
            raise PrvrError(f"{self.path.name}: non-finite scores (the index or the model is corrupt)")
        return Scores(total, per_set, best_token)

    # ------------------------------------------------------------------ search
    def search_repr(self, q: QueryRepr, k: int = 10, exact: bool | None = None, candidate_tokens: int | None = None,
                    candidate_videos: int | None = None, nprobe: int | None = None,
                    within: np.ndarray | None = None) -> list[Hit]:
        """Top-k videos for a normalised query representation. With an ANN built (`prvr index ann`) and exact not
        forced, stage 1 takes the `candidate_videos` best by the upper bound of their score over the
        `candidate_tokens` nearest tokens of each query row (searching `nprobe` lists), stage 2 re-ranks them
        exactly; otherwise every video is scored. Sizes left out follow `prvr.index.ann.ann_sizes`. `within`: only
        these videos (sorted global indices), scored exactly."""
        if not 1 <= k <= MAX_K:
            raise PrvrError(f"k={k}: expected 1 <= k <= {MAX_K}")
        if not self.ids:
            return []
        videos, lists_used = within, False
        if within is not None and not len(within):
            return []
        if within is None and not exact and self.ann is not None:
            sizes = self.ann.sizes(candidate_tokens, candidate_videos, nprobe)
            sizes = replace(sizes, tokens=max(sizes.tokens, k), videos=max(sizes.videos, k))
            videos = self.ann.candidates(q, sizes)
            if len(videos) < k:
                videos = None
            elif self.ann.lists is not None:  # stage 2 by one FAISS scan: the k best, then their numbers and tokens
                if len(videos) > k:
                    total = self._lists_scores(q, videos).total.cpu().numpy()
                    videos = np.sort(videos[np.argpartition(-total, k - 1)[:k]])
                lists_used = True
        sc = self._lists_scores(q, videos, tokens=True) if lists_used else self.scores(q, videos)
        if not torch.isfinite(sc.total).all():  # a NaN is never "lower": it must not become a hit
            raise PrvrError(f"{self.path.name}: non-finite scores (the index or the model is corrupt)")
        top = torch.topk(sc.total, min(k, len(sc.total))).indices
        glob = top.tolist() if videos is None else videos[top.cpu().numpy()].tolist()
        return self._with_moments(q, [self._hit(g, float(sc.total[t]), {n: float(v[t]) for n, v in sc.sets.items()},
                                                {n: int(v[t]) for n, v in sc.tokens.items()})
                                      for g, t in zip(glob, top.tolist(), strict=True)])

    def search_tokens(self, tokens: np.ndarray, k: int = 10, exact: bool | None = None, path: str | None = None
                      ) -> list[Hit]:
        return self.search_repr(self.embed(tokens), k, exact, within=None if path is None else
                                self.videos_matching(path))

    def search(self, text: str, k: int = 10, exact: bool | None = None, path: str | None = None) -> list[Hit]:
        """Free-text search (`path`: only videos whose file path contains it)."""
        return self.search_tokens(self.encode_text(text), k, exact, path)

    # ------------------------------------------------------------------ several queries at once
    def search_many(self, texts: list[str], k: int = 10, exact: bool | None = None, path: str | None = None
                    ) -> list[list[Hit]]:
        """Free-text search for several queries at once: the texts are encoded as one batch and, on an exact scan,
        scored as one matrix (every shard is read once for all of them). Hits are those of `search`. `path`: only
        the videos whose file path contains this substring."""
        return self.search_tokens_many(self.encode_texts(texts), k, exact, path)

    def search_tokens_many(self, tokens: list[np.ndarray], k: int = 10, exact: bool | None = None,
                           path: str | None = None) -> list[list[Hit]]:
        if not 1 <= k <= MAX_K:
            raise PrvrError(f"k={k}: expected 1 <= k <= {MAX_K}")
        if not tokens:
            return []
        q = self.embed_many(tokens)
        if not self.ids:
            return [[] for _ in tokens]
        within = None if path is None else self.videos_matching(path)
        if within is not None or self.exact_only or (not exact and self.ann is not None):
            # per query: a filtered scan, its own ANN candidates, or model.score
            return [self.search_repr(q[i:i + 1], k, exact, within=within) for i in range(len(q))]
        sc = self.scores_many(q)  # (V, N) each
        top = torch.topk(sc.total, min(k, len(self.ids)), dim=0).indices  # (k, N)
        return [self._with_moments(q[j:j + 1], [
            self._hit(int(g), float(sc.total[g, j]), {n: float(v[g, j]) for n, v in sc.sets.items()},
                      {n: int(v[g, j]) for n, v in sc.tokens.items()}) for g in top[:, j].tolist()])
            for j in range(len(q))]

    @torch.no_grad()
    def scores_many(self, q: QueryRepr) -> Scores:
        """Exact scores of every video for N normalised queries: total (V, N), per set (V, N), best token (V, N).
        Query rows aimed at a set are scaled by w_s * a_m and stacked, so each shard is one (T, N*M_s) product."""
        N = len(q)
        per_set: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in self.layouts:
            rows = q.rows_for(name)
            scale = self.weights.get(name, 0.0) * q.weights[:, rows]  # (N, M_s)
            Q = (q.vectors[:, rows] * scale[..., None]).float()  # (N, M_s, D); zero-weight rows score 0
            per_set[name] = (Q.reshape(N * len(rows), Q.shape[-1]), scale > 0)  # no rows for the set: (0, D)
        totals, sets, tokens = [], {n: [] for n in self.layouts}, {n: [] for n in self.layouts}
        for s in self.shards:
            total = torch.zeros(len(s.ids), N, device=self.device)
            for name, layout in self.layouts.items():
                Q, keep = per_set[name]
                if Q.shape[0] == 0:
                    sets[name].append(torch.zeros(len(s.ids), N, device=self.device))
                    tokens[name].append(torch.zeros(len(s.ids), N, dtype=torch.long, device=self.device))
                    continue
                best, arg = self._row_best(Q, s.sets[name], layout, None)  # (n, N * M_s)
                best, arg = best.view(len(s.ids), N, -1), arg.view(len(s.ids), N, -1)
                best = torch.where(keep[None], best, 0.0)
                top = torch.where(keep[None], best, float("-inf")).argmax(dim=2, keepdim=True)  # (n, N, 1)
                sets[name].append(best.sum(dim=2))
                tokens[name].append(arg.gather(2, top).squeeze(2))
                total += sets[name][-1]
            totals.append(total)
        out = Scores(torch.cat(totals), {n: torch.cat(v) for n, v in sets.items()},
                     {n: torch.cat(v) for n, v in tokens.items()})
        if not torch.isfinite(out.total).all():
            raise PrvrError(f"{self.path.name}: non-finite scores (the index or the model is corrupt)")
        return out

    def query_features(self, data_root: str | Path, query_id: str) -> np.ndarray:
        """The precomputed token features of caption `query_id` of a dataset in the release layout."""
        from prvr.data.features import open_query_features, read_text_encoder
        from prvr.data.layout import DatasetLayout

        layout = DatasetLayout(data_root, self.cfg.data.collection, self.cfg.data.visual_feature)
        self.check_query_encoder(read_text_encoder(layout), f"the text encoder of {layout.text_dir.name}")
        return open_query_features(layout).get(query_id)

    def search_query_id(self, data_root: str | Path, query_id: str, k: int = 10, exact: bool | None = None) -> list[Hit]:
        return self.search_tokens(self.query_features(data_root, query_id), k, exact)

    # ------------------------------------------------------------------ moments
    def video(self, video_id: str) -> dict:
        if video_id not in self._where:
            raise PrvrError(f"unknown video id {video_id!r}")
        si, j = self._where[video_id]
        return {"video_id": video_id, **self.shards[si].meta[j]}

    def _hit(self, i: int, score: float, set_scores: dict[str, float], tokens: dict[str, int]) -> Hit:
        vid = self.ids[i]
        si, j = self._where[vid]
        meta = self.shards[si].meta[j]
        n = int(meta.get("n_raw_frames", 0) or 0)
        token = tokens[self.moment_set]
        lo, hi = self.layouts[self.moment_set].frame_rows(n, token) if n else (token, token + 1)
        start = end = frame_time = frame = None
        duration = meta.get("duration")
        if duration and n:
            start, end = lo / n * duration, hi / n * duration
            f_lo, f_hi = (self.layouts[self.frame_set].frame_rows(n, tokens[self.frame_set]) if self.frame_set
                          else (lo, hi))
            frame = (f_lo + f_hi - 1) // 2  # the best frame token's middle raw frame (as in `moments`)
            times = meta.get("frame_times")
            frame_time = float(times[frame]) if isinstance(times, list) and len(times) == n else (frame + 0.5) / n * duration
        return Hit(vid, score, set_scores, tokens, start, end, frame_time, (lo, hi), frame)

    @torch.no_grad()
    def moments(self, q: QueryRepr, video_id: str, n: int = MOMENTS, rows: dict[str, torch.Tensor] | None = None
                ) -> list[dict]:
        """The best `n` distinct moments of one video for one normalised query: the moment set's tokens by their
        weighted similarity, each kept only if its frames neither overlap nor touch a better one's; each with the
        best frame inside it (from the frame set). `rows`: `scaled_rows(q)`, when the caller has it."""
        if self.exact_only:
            return []
        return self._moments_many(self.scaled_rows(q) if rows is None else rows, [video_id], n)[0]

    def _token_scores(self, rows: torch.Tensor, name: str, video_ids: list[str]) -> list[np.ndarray]:
        """Each video's tokens of one set scored by the set's scaled query rows (summed): one product for all."""
        parts = []
        for v in video_ids:  # data assembly: a slice of the memory map per video
            si, j = self._where[v]
            st = self.shards[si].sets[name]
            parts.append(st.tokens[st.offsets[j]:st.offsets[j + 1]])
        lengths = np.cumsum([len(p) for p in parts])[:-1]
        if not len(rows):
            return np.split(np.zeros(sum(len(p) for p in parts), np.float32), lengths)
        tok = _tensor(np.concatenate(parts)).to(self.device).float()  # (sum of tokens, D)
        return np.split((tok @ rows.T).sum(1).cpu().numpy(), lengths)

    @torch.no_grad()
    def _moments_many(self, rows: dict[str, torch.Tensor], video_ids: list[str], n: int = MOMENTS) -> list[list[dict]]:
        """`moments` of several videos for one query, their tokens scored together."""
        cells_of = self._token_scores(rows[self.moment_set], self.moment_set, video_ids)
        frames_of = (self._token_scores(rows[self.frame_set], self.frame_set, video_ids) if self.frame_set
                     else [None] * len(video_ids))
        return [self._distinct_moments(v, cells, frames, n) for v, cells, frames in zip(video_ids, cells_of, frames_of,
                                                                                      strict=True)]

    def _distinct_moments(self, video_id: str, cells: np.ndarray, frame_scores: np.ndarray | None, n: int
                          ) -> list[dict]:
        si, j = self._where[video_id]
        meta = self.shards[si].meta[j]
        n_raw, duration = int(meta.get("n_raw_frames", 0) or 0), meta.get("duration")
        if not n_raw or not duration:
            return []
        spans = self.layouts[self.moment_set].spans(n_raw)[:len(cells)]  # (T, 2) raw frame rows of each token
        frame_spans = None
        if frame_scores is not None:
            frame_spans = self.layouts[self.frame_set].spans(n_raw)[:len(frame_scores)]
        times = meta.get("frame_times") if isinstance(meta.get("frame_times"), list) else None
        out, kept = [], []
        for t in np.argsort(-cells, kind="stable").tolist():  # a few dozen tokens, best first: post-processing
            lo, hi = int(spans[t, 0]), int(spans[t, 1])
            if any(lo <= b and a <= hi for a, b in kept):
                continue
            kept.append((lo, hi))
            f_lo, f_hi = lo, hi
            if frame_spans is not None:  # the best frame token inside the moment (the first of equal ones)
                inside = (frame_spans[:, 0] < hi) & (frame_spans[:, 1] > lo)
                if inside.any():
                    f_lo, f_hi = (int(x) for x in frame_spans[np.argmax(np.where(inside, frame_scores, -np.inf))])
            frame = (f_lo + f_hi - 1) // 2
            ft = float(times[frame]) if times is not None and len(times) == n_raw else (frame + 0.5) / n_raw * duration
            out.append({"start": lo / n_raw * duration, "end": hi / n_raw * duration, "score": float(cells[t]),
                        "frame": frame, "frame_time": ft})
            if len(out) == n:
                break
        return out

    def _with_moments(self, q: QueryRepr, hits: list[Hit]) -> list[Hit]:
        if self.exact_only or not hits:
            return hits
        listed = hits[:MOMENT_HITS]
        for h, m in zip(listed, self._moments_many(self.scaled_rows(q), [h.video_id for h in listed]), strict=True):
            h.moments = m
        return hits

    def videos_matching(self, path: str) -> np.ndarray:
        """Global indices (sorted) of the videos whose file path (or, without one, id) contains `path`."""
        return np.array([i for i, v in enumerate(self.ids) if path in str(self.video(v).get("file") or v)],
                        dtype=np.int64)


__all__ = ["Hit", "Retriever"]
