"""Approximate first stage for large indexes: FAISS inverted lists over every token of every token set.

Stage 1 searches the tokens nearest to each query row and turns them into candidate videos by an upper bound of
their score: for a row m aimed at set s (scaled by c_m = w_s a_m) a video's best retrieved token of set s counts
its similarity, and a video none of whose s tokens was retrieved counts the row's threshold t_m (the similarity
of its last retrieved token, which no missed token exceeds as far as the probed lists tell). Videos are ranked by
sum_m c_m (best_m(v) - t_m), i.e. by that bound, so a video that wins on any token set (clip cells or frames) is
a candidate, and one that is good on both beats one that is good on one. Stage 2 (prvr.index.search) re-ranks
the candidates with the exact score.

Sizes (`ann_sizes`): the lists probed are a fraction of all lists, and the nearest tokens and the candidate videos
at least a fraction of the collection, so all three grow with it: the first stage of a larger collection has more
to look through for the same recall. Measured on a trained model's tokens (the demo's charades-small model over
6,400 synthetic videos, 300 captions; recall@10 of stage 1 + exact re-ranking against exact search) at the sizes
of 100,000 videos scaled down to 6,400 (256 candidate videos): 262 tokens (the old fixed 4,096) and 15 % of the
lists give 0.969 (sq8); 1,024 tokens (0.16 per video) give 0.980 (sq8) and 0.977 (pq4) at 15 %, 0.985 (pq4) at
25 %, hence 0.16 tokens per video and 25 % of the lists (bench/two_stage_recall.py, README "Two-stage search").
sq4 codes (4 bits per dimension, FAISS fast scan with one dimension per sub-quantizer: 16 learned levels per
dimension) rank finely enough to need no re-scoring: 0.982 at 0.16 tokens per video, 0.985 at 0.24 (hence 0.24 for
sq4) and 0.988 at 0.32, at 25 % of the lists and 4 % of the videos; 3 % of the videos gives 0.980 at 0.24.

Stage 2 reads the candidates' tokens from per-video lists (prvr.index.rerank), built here too unless turned off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prvr.index.faiss_io import write_faiss
from prvr.index.rerank import LISTS_FILE, VideoLists, build_lists
from prvr.index.store import IndexError_, Shard, layouts_of, load_shard, read_manifest
from prvr.index.store import tensor_view as _tensor
from prvr.io import atomic_path, check_writable, write_json_atomic
from prvr.models.base import QueryRepr

ANN_FILE, ANN_META, ANN_OWNERS = "ann.faiss", "ann.json", "ann.owners.npy"
# 8-bit scalar quantisation of every dimension; 4-bit product codes of 4-d pieces (fast scan), re-scored; 4-bit
# product codes of single dimensions (fast scan), not re-scored
CODES = ("sq8", "pq4", "sq4")


@dataclass(frozen=True)
class AnnSizes:
    tokens: int  # nearest tokens kept per query row
    videos: int  # candidate videos re-ranked exactly
    nprobe: int  # inverted lists searched


CANDIDATE_TOKENS = 4096  # at least this many nearest tokens per query row ...
CANDIDATE_TOKENS_PER_VIDEO = {"sq8": 0.16, "pq4": 0.16, "sq4": 0.24}  # ... and at least this many per video
CANDIDATE_VIDEOS = 1000  # at least this many candidate videos ...
CANDIDATE_VIDEO_FRACTION = 0.04  # ... and at least this fraction of the collection
NPROBE_FRACTION = 0.25  # of the inverted lists
REFINE = 4  # pq4: this many times more tokens are fetched, re-scored exactly from the index, and the best kept


def ann_sizes(n_videos: int, nlist: int, tokens: int | None = None, videos: int | None = None,
              nprobe: int | None = None, codes: str = "sq8") -> AnnSizes:
    """The default sizes of stage 1 for a collection of n_videos in nlist lists; any of them can be given."""
    per_video = CANDIDATE_TOKENS_PER_VIDEO[codes]
    return AnnSizes(tokens or max(CANDIDATE_TOKENS, int(np.ceil(per_video * n_videos))),
                    videos or max(CANDIDATE_VIDEOS, int(np.ceil(CANDIDATE_VIDEO_FRACTION * n_videos))),
                    nprobe or max(1, min(nlist, int(np.ceil(NPROBE_FRACTION * nlist)))))


def build_ann(index: Path, nlist: int | None = None, codes: str = "sq4", train_size: int = 200_000,
              chunk: int = 200_000, seed: int = 0, lists: bool = True) -> dict:
    """Build INDEX/ann.faiss over all tokens; memory stays bounded by `chunk` tokens plus the codes. `lists`: also
    stage 2's per-video lists (prvr.index.rerank), which hold the tokens once more while they are written."""
    import faiss

    if codes not in CODES:
        raise IndexError_(f"codes {codes!r}: expected one of {', '.join(CODES)}")
    index = Path(index)
    manifest = read_manifest(index)
    check_writable(index / ANN_FILE, "ANN stage")
    if not manifest.get("normalized", True):
        raise IndexError_(f"{index}: this model does not score by max-similarity; its index is searched exactly")
    names = list(layouts_of(manifest))
    shards = [load_shard(index / n, names, layouts_of(manifest)) for n in manifest["shards"]]
    parts = [(s, name) for s in shards for name in names]  # every (shard, token set), in a fixed order
    n_tokens = sum(s.sets[name].tokens.shape[0] for s, name in parts)
    if n_tokens == 0:
        raise IndexError_(f"{index}: empty index")
    dim = parts[0][0].sets[names[0]].tokens.shape[1]
    nlist = nlist or int(max(16, min(65536, 4 * np.sqrt(n_tokens))))
    rng = np.random.default_rng(seed)
    take = min(train_size, n_tokens)
    sample = []
    for s, name in parts:  # training sample, drawn part by part
        flat = s.sets[name].tokens
        k = min(len(flat), max(1, round(take * len(flat) / n_tokens)))
        if len(flat):
            sample.append(np.asarray(flat[np.sort(rng.choice(len(flat), k, replace=False))], np.float32))
    sample = np.concatenate(sample)
    quantizer = faiss.IndexFlatIP(dim)
    nlist = min(nlist, len(sample))
    if codes == "sq8":
        ann = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                            faiss.METRIC_INNER_PRODUCT)
    elif codes == "sq4":
        ann = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, dim, 4, faiss.METRIC_INNER_PRODUCT)
    else:
        if dim % 4:
            raise IndexError_(f"{index}: pq4 codes need a token size divisible by 4, got {dim}")
        ann = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, dim // 4, 4, faiss.METRIC_INNER_PRODUCT)
    ann.cp.niter = 10
    ann.train(sample)
    owners = np.empty(n_tokens, np.int32)  # token id -> global video index
    starts, sets = [], []  # token id ranges of the (shard, set) parts, and their set
    token_base = video_base = 0
    for s in shards:
        for si, name in enumerate(names):
            st = s.sets[name]
            owners[token_base:token_base + len(st.tokens)] = video_base + np.repeat(np.arange(len(s.ids)), st.counts)
            starts.append(token_base)
            sets.append(si)
            for start in range(0, len(st.tokens), chunk):
                part = np.asarray(st.tokens[start:start + chunk], np.float32)
                ann.add_with_ids(part, token_base + np.arange(start, start + len(part), dtype=np.int64))
            token_base += len(st.tokens)
        video_base += len(s.ids)
    write_faiss(ann, index / ANN_FILE)
    with atomic_path(index / ANN_OWNERS) as tmp, open(tmp, "wb") as f:
        np.save(f, owners)
    del ann
    if lists:
        build_lists(index, shards, names, dim, chunk)
    else:
        (index / LISTS_FILE).unlink(missing_ok=True)
    meta = {"n_videos": video_base, "n_tokens": int(n_tokens), "nlist": nlist, "codes": codes,
            "token_sets": names, "shards": manifest["shards"], "part_starts": starts, "part_sets": sets,
            "lists": LISTS_FILE if lists else None}
    write_json_atomic(index / ANN_META, meta)
    return meta


class TokenANN:
    """Stage 1 over an index's tokens. `weights`: the index's score weight per token set; `shards`: the index's
    shards, for re-scoring product-coded tokens exactly."""

    def __init__(self, index: Path, weights: dict[str, float], shards: list[Shard]):
        import faiss

        index = Path(index)
        try:
            self.meta = json.loads((index / ANN_META).read_text(encoding="utf-8"))
            self.ann = faiss.read_index(str(index / ANN_FILE))
            self.owners = np.load(index / ANN_OWNERS, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, RuntimeError, UnicodeDecodeError, RecursionError) as e:
            raise IndexError_(f"{index}: corrupt ANN stage ({e.__class__.__name__}; rebuild it with "
                              "`prvr index ann`)") from None
        m = self.meta
        if (not isinstance(m, dict) or not isinstance(m.get("shards"), list) or not isinstance(m.get("token_sets"), list)
                or not isinstance(m.get("n_videos"), int) or self.owners.ndim != 1
                or len(self.owners) != self.ann.ntotal or not np.issubdtype(self.owners.dtype, np.integer)
                or (len(self.owners) and (self.owners.min() < 0 or self.owners.max() >= m["n_videos"]))):
            raise IndexError_(f"{index / ANN_META}: corrupt ANN stage (its parts do not agree; rebuild it with "
                              "`prvr index ann`)")
        self.names = list(m["token_sets"])
        self.weights = np.array([float(weights.get(n, 0.0)) for n in self.names])
        self.part_starts = np.asarray(m.get("part_starts", [0]), np.int64)
        self.part_sets = np.asarray(m.get("part_sets", [0]), np.int64)
        self.codes = m.get("codes", "sq8")
        if self.codes not in CODES:
            raise IndexError_(f"{index / ANN_META}: codes {self.codes!r}, expected one of {', '.join(CODES)} (rebuild "
                              "it with `prvr index ann`)")
        self.shards = shards
        self.n_videos = int(m["n_videos"])
        self.lists = None  # stage 2's per-video lists, when built
        if m.get("lists") and shards and len(shards) == len(m["shards"]):  # not read for a stale stage
            counts = [np.concatenate([s.sets[n].counts for s in shards]) for n in self.names]
            if all(len(c) == self.n_videos for c in counts):
                self.lists = VideoLists(index / LISTS_FILE, counts)

    def covers(self, manifest: dict) -> bool:
        return (self.meta["shards"] == manifest["shards"] and self.names == list(manifest["token_sets"])
                and self.meta["n_videos"] == manifest.get("n_videos") and "part_starts" in self.meta)

    def sizes(self, tokens: int | None = None, videos: int | None = None, nprobe: int | None = None) -> AnnSizes:
        return ann_sizes(self.n_videos, self.ann.nlist, tokens, videos, nprobe, self.codes)

    def _exact(self, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact similarity of each row's returned tokens (U, K) from the index's float16 tokens (-inf where none
        was returned), read part by part (a part: one token set of one shard)."""
        U, K = ids.shape
        flat = ids.reshape(-1)
        where = np.flatnonzero(flat >= 0)  # positions of the returned tokens
        tokens = flat[where]
        part = np.searchsorted(self.part_starts, tokens, side="right") - 1
        order = np.argsort(part.astype(np.int32 if len(self.part_starts) >= 2 ** 15 else np.int16), kind="stable")
        where, tokens, part = where[order], tokens[order], part[order]  # grouped by part (a radix sort: few parts)
        cuts = np.searchsorted(part, np.arange(len(self.part_starts) + 1))  # part p: tokens[cuts[p]:cuts[p+1]]
        local = torch.from_numpy(tokens - self.part_starts[part])  # row within its part
        rows = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))  # (U, D)
        sims = torch.empty(len(tokens))
        for p in np.flatnonzero(np.diff(cuts)):  # the parts that hold returned tokens (a few dozen shards x sets)
            a, b = cuts[p], cuts[p + 1]
            shard, name = self.shards[p // len(self.names)], self.names[self.part_sets[p]]
            block = _tensor(shard.sets[name].tokens).index_select(0, local[a:b]).float()  # (n, D)
            if U == 1:
                torch.mv(block, rows[0], out=sims[a:b])
            else:
                sims[a:b] = (block @ rows.T).gather(1, torch.from_numpy(where[a:b] // K)[:, None]).squeeze(1)
        out = np.full(U * K, -np.inf, np.float32)
        out[where] = sims.numpy()
        return out.reshape(U, K)

    def _search(self, vectors: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's k nearest tokens of each vector over its nprobe nearest lists: similarities and ids (U, k), -1
        where fewer were found. With several threads the probed lists are split in one share per thread, each
        share searched as its own query (FAISS gives each query one thread), and each vector's shares merged: the
        same tokens as one search (ties at the last one aside), unordered."""
        import faiss

        U, threads = len(vectors), min(faiss.omp_get_max_threads(), nprobe)
        if threads < 2:  # the lists probed as a parameter of this search, not a setting shared with other threads
            return self.ann.search(vectors, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        dist, lists = self.ann.quantizer.search(vectors, nprobe)  # (U, nprobe) the probed lists, nearest first
        cuts = np.linspace(0, nprobe, threads + 1).astype(np.int64)
        width = int(np.diff(cuts).max())
        keys, coarse = np.full((U * threads, width), -1, np.int64), np.zeros((U * threads, width), np.float32)
        for p in range(threads):  # query u * threads + p: vector u over share p of its lists (-1: no list)
            keys[p::threads, :cuts[p + 1] - cuts[p]] = lists[:, cuts[p]:cuts[p + 1]]
            coarse[p::threads, :cuts[p + 1] - cuts[p]] = dist[:, cuts[p]:cuts[p + 1]]
        x = np.ascontiguousarray(np.repeat(vectors, threads, axis=0), np.float32)  # held while FAISS reads it
        sims, ids = np.empty((U * threads, k), np.float32), np.empty((U * threads, k), np.int64)
        params = faiss.SearchParametersIVF(nprobe=width)
        self.ann.search_preassigned_c(len(x), faiss.swig_ptr(x), k, faiss.swig_ptr(keys), faiss.swig_ptr(coarse),
                                      faiss.swig_ptr(sims), faiss.swig_ptr(ids), False, params)
        sims, ids = sims.reshape(U, threads * k), ids.reshape(U, threads * k)
        keep = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # each vector's k best over its shares
        return np.take_along_axis(sims, keep, 1), np.take_along_axis(ids, keep, 1)

    def candidates(self, q: QueryRepr, sizes: AnnSizes) -> np.ndarray:
        """A normalised query -> up to `sizes.videos` candidate videos (sorted global indices), ranked by the upper
        bound of their score over the `sizes.tokens` nearest tokens of each query row (see the module doc)."""
        weights = q.weights[0].float().cpu().numpy()  # (M,)
        live = np.nonzero(weights > 0)[0]
        rows = q.vectors[0, live].float().cpu().numpy()
        vectors, row_of = np.unique(rows, axis=0, return_inverse=True)  # one vector aimed at several sets: one search
        vectors = np.ascontiguousarray(vectors, np.float32)
        fetch = sizes.tokens * (REFINE if self.codes == "pq4" else 1)
        sims, ids = self._search(vectors, fetch, sizes.nprobe)  # (U, K) each
        if self.codes == "pq4":  # product codes only rank roughly: re-score the fetched tokens exactly
            sims = self._exact(vectors, ids)
            if sims.shape[1] > sizes.tokens:  # the best `tokens` of each row (unordered: only sets of them are used)
                keep = np.argpartition(-sims, sizes.tokens - 1, axis=1)[:, :sizes.tokens]
                sims, ids = np.take_along_axis(sims, keep, 1), np.take_along_axis(ids, keep, 1)
            ids = np.where(np.isfinite(sims), ids, -1)
        found = ids >= 0
        if not found.any():
            return np.zeros(0, np.int64)
        threshold = np.where(found, sims, np.inf).min(axis=1)  # (U,) the last retrieved similarity
        owner = np.where(found, np.asarray(self.owners[np.maximum(ids, 0)]), -1)  # (U, K) video of each token
        token_set = self.part_sets[np.searchsorted(self.part_starts, np.maximum(ids, 0), side="right") - 1]
        # per query row m: its vector u, its set s and its scale c_m; per (m, video): the best retrieved s token
        targets = [self.names.index(q.targets[m]) if q.targets[m] in self.names else -1 for m in live]
        scale = weights[live] * np.array([self.weights[t] if t >= 0 else 0.0 for t in targets])
        gains, videos = [], []
        for m, (u, t) in enumerate(zip(row_of.reshape(-1), targets, strict=True)):
            if t < 0 or scale[m] <= 0:
                continue
            hit = found[u] & (token_set[u] == t)
            gains.append(scale[m] * (sims[u][hit] - threshold[u]))
            videos.append(owner[u][hit].astype(np.int64) * len(live) + m)  # key (video, row)
        if not gains:
            return np.zeros(0, np.int64)
        key, gain = np.concatenate(videos), np.concatenate(gains)
        key, inverse = np.unique(key, return_inverse=True)
        best = np.full(len(key), -np.inf)
        np.maximum.at(best, inverse, gain)  # each (video, row): its best token
        video, inverse = np.unique(key // len(live), return_inverse=True)
        bound = np.bincount(inverse, weights=best)  # sum over rows of c_m (best - t_m)
        if len(video) > sizes.videos:
            video = video[np.argpartition(-bound, sizes.videos - 1)[:sizes.videos]]
        return np.sort(video)
