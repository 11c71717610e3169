"""Two-stage search at scale on a trained model's tokens: latency of the whole query (text encoding included) and
recall against exact search.

The tokens are drawn from a real index built with a trained model (`--from-index`, e.g. the demo's charades-small
model over `prvr synth --preset charades-small --scale 10`): each of the N synthetic videos splices the clip cells
and frames of two indexed videos at a random cut, with a little noise on every token (cosine ~0.97), so queries
meet the score margins of a real model, not planted clusters. The model's hidden size is embedded isometrically
into --dim (inner products unchanged), so the index costs what one of the preset's width costs. Queries are the
source dataset's test captions: their text is encoded with all-MiniLM-L6-v2 (the text encoder prvr ships; a
free-text query pays this), their token features by the trained model's query encoder; both are timed with the
search itself.

    python bench/search.py --from-index IDX --data ROOT --videos 100000 --json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, result_name, write_result  # noqa: E402

from prvr.data.layout import DatasetLayout, read_captions  # noqa: E402
from prvr.index.ann import CODES, build_ann  # noqa: E402
from prvr.index.search import Retriever  # noqa: E402
from prvr.index.store import append_shard, create_index, layouts_of, read_manifest  # noqa: E402
from prvr.models.base import QueryRepr  # noqa: E402
from prvr.runtime import tune_allocator  # noqa: E402

FRAME_STEP = 0.5


def source_tokens(r: Retriever) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every indexed video's clip cells (V, Kc, d) and frames (list of (n_i, d)), float32."""
    clips, frames = [], []
    for s in r.shards:
        clip, fr = s.sets["clip"], s.sets["frame"]
        clips.append(np.asarray(clip.tokens, np.float32).reshape(len(s.ids), -1, clip.tokens.shape[1]))
        ft = np.asarray(fr.tokens, np.float32)
        frames.extend(ft[a:b] for a, b in zip(fr.offsets[:-1], fr.offsets[1:], strict=True))
    return np.concatenate(clips), frames


def spliced(rng, clips, frames, n, noise, embed):
    """n videos, each two source videos cut at a random clip cell (frames cut at the same fraction)."""
    V, Kc, d = clips.shape
    a, b = rng.integers(V, size=n), rng.integers(V, size=n)
    cut = rng.integers(Kc // 4, 3 * Kc // 4 + 1, size=n)
    clip = np.where(np.arange(Kc)[None, :, None] < cut[:, None, None], clips[a], clips[b])  # (n, Kc, d)
    out_frames = []
    for i in range(n):  # data assembly of the benchmark, not a forward pass
        fa, fb = frames[a[i]], frames[b[i]]
        f = np.concatenate([fa[:round(len(fa) * cut[i] / Kc)], fb[round(len(fb) * cut[i] / Kc):]])[:128]
        out_frames.append(f if len(f) else fa[:1])

    def jitter(x):
        x = x + noise / np.sqrt(d) * rng.standard_normal(x.shape, dtype=np.float32)
        return ((x / np.linalg.norm(x, axis=-1, keepdims=True)) @ embed).astype(np.float16)

    lengths = [len(f) for f in out_frames]
    flat = jitter(np.concatenate(out_frames))
    return list(jitter(clip)), np.split(flat, np.cumsum(lengths)[:-1]), lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-index", type=Path, required=True, help="an index built with a trained model")
    ap.add_argument("--data", type=Path, required=True, help="the dataset root of that index (test captions)")
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384, help="token size (the charades preset's hidden size)")
    ap.add_argument("--codes", default="sq4", choices=list(CODES))
    ap.add_argument("--queries", type=int, default=200, help="latency queries")
    ap.add_argument("--recall-queries", type=int, default=100, help="queries also searched exactly")
    ap.add_argument("--noise", type=float, default=0.25, help="per-token noise norm before renormalising")
    ap.add_argument("--shard", type=int, default=5000)
    ap.add_argument("--nlist", type=int, default=None, help="inverted lists of the ANN stage (default: prvr's, ~4 sqrt(tokens))")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to build and keep the index (default: a temporary directory); an index of the same "
                         "size and codes already there is reused and only queries are measured, one cut short by "
                         "an interruption is completed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tune_allocator()
    src = Retriever(args.from_index)
    d = src.cfg.model.hidden_size
    rng = np.random.default_rng(0)
    embed = np.linalg.qr(rng.standard_normal((args.dim, d)))[0].T.astype(np.float32)  # (d, dim), orthonormal rows
    work = args.dir or Path(tempfile.mkdtemp(prefix="prvr-bench-"))
    index = work / "index"
    reuse = (args.dir is not None and (index / "ann.json").exists() and read_manifest(index)["n_videos"] == args.videos
             and Retriever(index).ann is not None and Retriever(index).ann.codes == args.codes
             and args.nlist in (None, Retriever(index).ann.ann.nlist))
    t_write = t_ann = rss_build = None
    done = 0
    if not reuse:
        done = read_manifest(index)["n_videos"] if (index / "manifest.json").exists() else 0
        if done == args.videos:
            print(f"reusing the tokens in {index}, rebuilding its ANN stage", file=sys.stderr)
        else:
            resume = args.dir is not None and 0 < done < args.videos and done % args.shard == 0
            if index.exists() and not resume:
                shutil.rmtree(index)
            clips, frames = source_tokens(src)
            t0 = time.perf_counter()
            m = src.manifest
            manifest = (read_manifest(index) if resume else
                        create_index(index, args.from_index / "model.safetensors", m["config"], layouts_of(m),
                                     m["score_weights"], True, None))
            for start in range(0, args.videos, args.shard):
                n = min(args.shard, args.videos - start)
                clip, fr, lengths = spliced(rng, clips, frames, n, args.noise, embed)  # drawn even when kept:
                if start < done:  # an interrupted build resumes with the very tokens it would have written
                    continue
                meta = [{"n_raw_frames": k, "duration": k * FRAME_STEP,
                         "frame_times": [(j + 0.5) * FRAME_STEP for j in range(k)]} for k in lengths]
                manifest = append_shard(index, manifest, [f"v{start + i:07d}" for i in range(n)],
                                        {"clip": clip, "frame": fr}, meta)
            t_write = round(time.perf_counter() - t0, 1)
            del clips, frames
        t0 = time.perf_counter()
        build_ann(index, nlist=args.nlist, codes=args.codes)
        t_ann = round(time.perf_counter() - t0, 1)
        rss_build = round(peak_rss_mb(), 1)

    from prvr.encode.encoders import load_text_encoder

    r = Retriever(index)
    text_encoder = load_text_encoder("minilm")
    layout = DatasetLayout(args.data, src.cfg.data.collection, src.cfg.data.visual_feature)
    caps = read_captions(layout.caption_file("test"))[:max(args.queries, args.recall_queries)]
    feats = [src.query_features(args.data, c) for c, _ in caps]  # read beforehand: file access is not timed

    def query(i) -> tuple[QueryRepr, float, float]:
        t = time.perf_counter()
        text_encoder.encode([caps[i][1]])  # what a free-text query costs first
        t_text = time.perf_counter() - t
        q = src.embed(feats[i])  # the trained model's query encoder on the caption's token features
        q = QueryRepr(q.vectors @ torch.from_numpy(embed), q.weights, q.targets, normalized=True)
        return q, t_text, time.perf_counter() - t - t_text

    query(0)
    r.search_repr(query(0)[0], 100)  # warm-up
    stages = {"stage1": [], "stage2": [], "moments": []}  # where a search's time goes, per query

    def timed(name, f):
        def run(*a, **kw):
            t = time.perf_counter()
            out = f(*a, **kw)
            stages[name][-1] += (time.perf_counter() - t) * 1000
            return out
        return run

    r.ann.candidates = timed("stage1", r.ann.candidates)  # FAISS and the exact re-scoring of pq4 tokens
    r.scores = timed("stage2", r.scores)  # exact max-similarity of the candidates (torch) ...
    r._lists_scores = timed("stage2", r._lists_scores)  # ... or from the per-video lists (FAISS)
    r._with_moments = timed("moments", r._with_moments)  # the moments of the top 50 hits
    total, text_ms, embed_ms, search_ms = [], [], [], []
    for i in range(args.queries):
        for v in stages.values():
            v.append(0.0)
        t = time.perf_counter()
        q, t_text, t_embed = query(i)
        t_search = time.perf_counter()
        r.search_repr(q, 100)
        search_ms.append((time.perf_counter() - t_search) * 1000)
        total.append((time.perf_counter() - t) * 1000)
        text_ms.append(t_text * 1000)
        embed_ms.append(t_embed * 1000)
    del r.ann.candidates, r.scores, r._lists_scores, r._with_moments  # the instance's timers go: the methods are the class's again
    rec10, rec100, t_exact = [], [], []
    for i in range(args.recall_queries):
        q = query(i)[0]
        t = time.perf_counter()
        exact = [h.video_id for h in r.search_repr(q, 100, exact=True)]
        t_exact.append(time.perf_counter() - t)
        approx = [h.video_id for h in r.search_repr(q, 100)]
        rec10.append(len(set(exact[:10]) & set(approx[:10])) / 10)
        rec100.append(len(set(exact) & set(approx)) / 100)
    sizes = r.ann.sizes()
    pct = lambda x, p: round(float(np.percentile(x, p)), 2)  # noqa: E731
    result = {"token_source": f"trained model's tokens from {args.from_index} ({len(src)} videos, hidden {d}), "
                              f"two videos spliced per video, noise {args.noise}, embedded isometrically in {args.dim}-d",
              "videos": args.videos, "dim": args.dim, "tokens": r.ann.meta["n_tokens"], "codes": r.ann.codes,
              "nlist": r.ann.ann.nlist, "candidate_tokens": sizes.tokens, "candidate_videos": sizes.videos,
              "nprobe": sizes.nprobe, "queries": args.queries, "k": 100,
              "query_ms_p50": pct(total, 50), "query_ms_p95": pct(total, 95),
              "text_encoding_ms_p50": pct(text_ms, 50), "query_encoder_ms_p50": pct(embed_ms, 50),
              "search_ms_p50": pct(search_ms, 50), "search_ms_p95": pct(search_ms, 95),
              **{f"{name}_ms_p50": pct(v, 50) for name, v in stages.items()},
              "recall_queries": args.recall_queries, "recall_at_10": round(float(np.mean(rec10)), 4),
              "recall_at_10_min": float(np.min(rec10)), "recall_at_100": round(float(np.mean(rec100)), 4),
              "exact_search_s_per_query": round(statistics.mean(t_exact), 3), "index_write_s": t_write,
              "ann_build_s": t_ann, "index_resumed_at_videos": done or None, "peak_rss_mb_build": rss_build, "peak_rss_mb": round(peak_rss_mb(), 1),
              "index_gb": round(sum(f.stat().st_size for f in index.rglob("*") if f.is_file()) / 1e9, 2),
              "threads": torch.get_num_threads()}
    if args.dir is None:
        shutil.rmtree(work)
    write_result(result_name("search", f"trained-{args.from_index.name}",
                             f"{args.videos}v-{args.dim}d-{args.codes}-{torch.get_num_threads()}t", "fp16", "cpu"),
                 result, args.json)


if __name__ == "__main__":
    main()
