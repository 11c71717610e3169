"""Approximate candidate generation for large indexes: FAISS inverted lists over every clip token.

Stage 1 finds the clip tokens nearest to the query (IVF with 8-bit scalar quantisation, built streaming
from the shards) and keeps their videos as candidates; stage 2 (prvr.index.search) re-ranks the candidates
with the exact weighted clip + frame score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from prvr.index.store import IndexError_, load_shard, read_manifest
from prvr.io import atomic_path, write_json_atomic

ANN_FILE, ANN_META = "ann.faiss", "ann.json"


def build_ann(index: Path, nlist: int | None = None, train_size: int = 200_000, chunk: int = 200_000,
              seed: int = 0) -> dict:
    """Build INDEX/ann.faiss over all clip tokens; memory stays bounded by `chunk` tokens plus the codes."""
    import faiss

    index = Path(index)
    manifest = read_manifest(index)
    shards = [load_shard(index / n) for n in manifest["shards"]]
    n_tokens = sum(s.clip.shape[0] * s.clip.shape[1] for s in shards)
    if n_tokens == 0:
        raise IndexError_(f"{index}: empty index")
    dim = shards[0].clip.shape[2]
    nlist = nlist or int(max(16, min(65536, 4 * np.sqrt(n_tokens))))
    rng = np.random.default_rng(seed)
    # training sample, drawn shard by shard
    take = min(train_size, n_tokens)
    sample = []
    for s in shards:
        flat = s.clip.reshape(-1, dim)
        k = max(1, round(take * len(flat) / n_tokens))
        sample.append(np.asarray(flat[np.sort(rng.choice(len(flat), min(k, len(flat)), replace=False))], np.float32))
    sample = np.concatenate(sample)
    quantizer = faiss.IndexFlatIP(dim)
    ann = faiss.IndexIVFScalarQuantizer(quantizer, dim, min(nlist, len(sample)), faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    ann.train(sample)
    video_base = 0
    for s in shards:
        flat = s.clip.reshape(-1, dim)
        kc = s.clip.shape[1]
        for start in range(0, len(flat), chunk):
            part = np.asarray(flat[start:start + chunk], np.float32)
            ids = video_base * kc + np.arange(start, start + len(part), dtype=np.int64)  # token id = video * Kc + cell
            ann.add_with_ids(part, ids)
        video_base += s.clip.shape[0]
    with atomic_path(index / ANN_FILE) as tmp:
        faiss.write_index(ann, str(tmp))
    meta = {"n_videos": video_base, "tokens_per_video": int(shards[0].clip.shape[1]), "nlist": ann.nlist,
            "shards": manifest["shards"]}
    write_json_atomic(index / ANN_META, meta)
    return meta


class ClipTokenANN:
    def __init__(self, index: Path, nprobe: int = 32):
        import faiss

        index = Path(index)
        self.meta = json.loads((index / ANN_META).read_text())
        self.ann = faiss.read_index(str(index / ANN_FILE))
        self.ann.nprobe = nprobe
        self.kc = self.meta["tokens_per_video"]

    def covers(self, manifest: dict) -> bool:
        return self.meta["shards"] == manifest["shards"]

    def candidates(self, q: np.ndarray, n_tokens: int, n_videos: int) -> np.ndarray:
        """Normalised query (D,) -> up to `n_videos` candidate videos, ranked by their best approximate clip-token
        similarity among the `n_tokens` nearest tokens."""
        sims, ids = self.ann.search(np.ascontiguousarray(q[None], np.float32), n_tokens)
        sims, ids = sims[0], ids[0]
        ok = ids >= 0
        videos, first = np.unique(ids[ok] // self.kc, return_index=True)  # results come sorted by similarity
        order = np.argsort(first)[:n_videos]  # first occurrence = that video's best token
        return np.sort(videos[order])
