"""Stage 2's store for large collections: every token of the index once more, as float16 codes in one FAISS
inverted list per (video, token set), list v * S + s. One range search over the candidates' lists with radius -inf
returns the similarity of every token of theirs in a single pass of FAISS's SIMD scan, list after list; the best of
a list is that video's max-similarity on that set, the same float16 tokens and float32 products as the torch path
of `prvr.index.search`, without gathering the candidates' tokens into a float32 copy first. It costs the index's
token bytes once more on disk (memory-mapped when read: 2.9 GB at 100,000 videos of 112 128-d tokens).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prvr.index.faiss_io import write_faiss
from prvr.index.store import IndexError_, Shard

LISTS_FILE = "ann.lists.faiss"


def build_lists(index: Path, shards: list[Shard], names: list[str], dim: int, chunk: int = 200_000) -> int:
    """Write INDEX/ann.lists.faiss: each token's float16 code in the list of its (video, set), its id that list's
    number. Returns the number of tokens stored."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    S = len(names)
    n_videos = sum(len(s.ids) for s in shards)
    lists = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, max(1, n_videos * S),
                                          faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False)
    lists.is_trained = True  # float16 codes need no training, and every token's list is given, never assigned
    base = 0
    for s in shards:
        for si, name in enumerate(names):
            st = s.sets[name]
            owner = (base + np.repeat(np.arange(len(s.ids)), st.counts)) * S + si  # (tokens,) list of each token
            for a in range(0, len(st.tokens), chunk):
                part = np.asarray(st.tokens[a:a + chunk], np.float32)
                add_preassigned(lists, part, owner[a:a + len(part)], owner[a:a + len(part)])
        base += len(s.ids)
    write_faiss(lists, index / LISTS_FILE)
    return int(lists.ntotal)


class VideoLists:
    """The lists of an index, memory-mapped. `counts[s]`: tokens of each video (global index) in set s."""

    def __init__(self, path: Path, counts: list[np.ndarray]):
        import faiss

        try:
            self.lists = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        except (RuntimeError, OSError) as e:
            raise IndexError_(f"{path}: corrupt stage-2 lists ({e.__class__.__name__}; rebuild them with "
                              "`prvr index ann`)") from None
        self.counts = counts  # one array per token set: an index has at least one
        self.S = len(counts)
        n_videos = len(counts[0])
        if (not isinstance(self.lists, faiss.IndexIVFScalarQuantizer) or self.lists.nlist != max(1, n_videos * self.S)
                or self.lists.ntotal != sum(int(c.sum()) for c in counts)):
            raise IndexError_(f"{path}: stage-2 lists that do not match the index (rebuild them with `prvr index ann`)")

    def best(self, rows: np.ndarray, sets: np.ndarray, videos: np.ndarray, tokens: bool = False,
             parts: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """rows (R, D) float32 query rows, each aimed at token set sets[r]; videos (n,) sorted global indices ->
        (R, n) float32: per row and video the best similarity over the video's tokens of that set (-inf for a video
        with none), and with `tokens` the token that reaches it (R, n) (the first of equal ones; 0 for none).
        `parts`: the videos are split in this many shares, each row and share one FAISS query, so that FAISS's
        threads (which take queries in parallel) get equal work (default: one share per thread)."""
        import faiss

        R, n = len(rows), len(videos)
        out = np.full((R, n), -np.inf, np.float32)
        arg = np.zeros((R, n), np.int64) if tokens else None
        if not R or not n:
            return out, arg
        counts = np.stack([self.counts[s][videos] for s in sets])  # (R, n)
        keys = (videos[None] * self.S + sets[:, None]).astype(np.int64)  # (R, n) the lists each row scans
        parts = max(1, min(parts or faiss.omp_get_max_threads(), n))
        cuts = np.linspace(0, n, parts + 1).astype(np.int64)
        width = int(np.diff(cuts).max())
        asked = np.full((parts * R, width), -1, np.int64)  # query p * R + r: row r over share p (-1: no list)
        for p in range(parts):
            asked[p * R:(p + 1) * R, :cuts[p + 1] - cuts[p]] = keys[:, cuts[p]:cuts[p + 1]]
        x = np.ascontiguousarray(np.tile(rows, (parts, 1)), np.float32)  # (parts * R, D); held while FAISS reads
        coarse = np.zeros(asked.shape, np.float32)  # no coarse term: the lists hold the tokens themselves
        res, params = faiss.RangeSearchResult(len(asked)), faiss.SearchParametersIVF(nprobe=width)
        self.lists.range_search_preassigned_c(len(asked), faiss.swig_ptr(x), float(-np.inf), faiss.swig_ptr(asked),
                                              faiss.swig_ptr(coarse), res, False, params)
        lims = faiss.rev_swig_ptr(res.lims, len(asked) + 1).astype(np.int64)
        sims = faiss.rev_swig_ptr(res.distances, int(lims[-1]))  # every token of every scanned list ...
        labels = faiss.rev_swig_ptr(res.labels, int(lims[-1]))  # ... and its list, both in the order asked
        for r in range(R):  # a few query rows
            c = counts[r]
            full = np.nonzero(c)[0]  # videos with tokens in this set
            mine = [slice(lims[p * R + r], lims[p * R + r + 1]) for p in range(parts)]
            seg, lab = np.concatenate([sims[m] for m in mine]), np.concatenate([labels[m] for m in mine])
            if len(seg) != c.sum():
                raise IndexError_("stage-2 lists returned another number of tokens than the index holds (rebuild "
                                  "them with `prvr index ann`)")
            if not len(full):
                continue
            if not np.array_equal(lab, np.repeat(keys[r, full], c[full])):
                raise IndexError_("stage-2 lists out of order or not the index's (rebuild them with `prvr index ann`)")
            starts = np.concatenate([[0], np.cumsum(c[full])[:-1]])  # each video's first token in seg
            out[r, full] = np.maximum.reduceat(seg, starts)
            if tokens:  # the first token of each video that reaches its best
                at_best = np.flatnonzero(seg == np.repeat(out[r, full], c[full]))
                arg[r, full] = at_best[np.searchsorted(at_best, starts)] - starts
        return out, arg
