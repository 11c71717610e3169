"""Approximate candidate generation for large indexes: FAISS inverted lists over every token of every token set.

Stage 1 finds the tokens nearest to each query row (IVF with 8-bit scalar quantisation, built streaming from the
shards) and keeps their videos as candidates, so a video that wins on any token set (clip cells or frames) can be
found; stage 2 (prvr.index.search) re-ranks the candidates with the exact score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from prvr.errors import OutputError
from prvr.index.store import IndexError_, layouts_of, load_shard, read_manifest
from prvr.io import atomic_path, check_writable, write_json_atomic
from prvr.models.base import QueryRepr

ANN_FILE, ANN_META, ANN_OWNERS = "ann.faiss", "ann.json", "ann.owners.npy"


def build_ann(index: Path, nlist: int | None = None, train_size: int = 200_000, chunk: int = 200_000,
              seed: int = 0) -> dict:
    """Build INDEX/ann.faiss over all tokens; memory stays bounded by `chunk` tokens plus the codes."""
    import faiss

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
    ann = faiss.IndexIVFScalarQuantizer(quantizer, dim, min(nlist, len(sample)), faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    ann.train(sample)
    owners = np.empty(n_tokens, np.int32)  # token id -> global video index
    token_base = video_base = 0
    for s in shards:
        for name in names:
            st = s.sets[name]
            owners[token_base:token_base + len(st.tokens)] = video_base + np.repeat(np.arange(len(s.ids)), st.counts)
            for start in range(0, len(st.tokens), chunk):
                part = np.asarray(st.tokens[start:start + chunk], np.float32)
                ann.add_with_ids(part, token_base + np.arange(start, start + len(part), dtype=np.int64))
            token_base += len(st.tokens)
        video_base += len(s.ids)
    with atomic_path(index / ANN_FILE) as tmp:
        try:
            faiss.write_index(ann, str(tmp))
        except RuntimeError as e:  # faiss reports a failed write (full disk) as a RuntimeError
            raise OutputError(f"{index / ANN_FILE}: cannot write ({str(e).splitlines()[0][:200]})") from None
    with atomic_path(index / ANN_OWNERS) as tmp, open(tmp, "wb") as f:
        np.save(f, owners)
    meta = {"n_videos": video_base, "n_tokens": int(n_tokens), "nlist": ann.nlist, "token_sets": names,
            "shards": manifest["shards"]}
    write_json_atomic(index / ANN_META, meta)
    return meta


class TokenANN:
    def __init__(self, index: Path, nprobe: int = 32):
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
        self.ann.nprobe = nprobe

    def covers(self, manifest: dict) -> bool:
        return (self.meta["shards"] == manifest["shards"] and self.meta["token_sets"] == list(manifest["token_sets"])
                and self.meta["n_videos"] == manifest.get("n_videos"))

    def candidates(self, q: QueryRepr, n_tokens: int, n_videos: int) -> np.ndarray:
        """A normalised query -> up to `n_videos` candidate videos (sorted global indices), ranked by their best
        approximate similarity to any query row among the `n_tokens` nearest tokens of each row."""
        rows = q.vectors[0][q.weights[0] > 0].float().cpu().numpy()
        rows = np.unique(rows, axis=0)  # a single vector used for several sets is searched once
        sims, ids = self.ann.search(np.ascontiguousarray(rows, np.float32), n_tokens)
        sims, ids = sims.reshape(-1), ids.reshape(-1)
        ok = ids >= 0
        order = np.argsort(-sims[ok], kind="stable")
        videos = np.asarray(self.owners[ids[ok][order]])
        uniq, first = np.unique(videos, return_index=True)  # first occurrence = that video's best token
        keep = uniq[np.argsort(first)[:n_videos]]
        return np.sort(keep)
