"""Recall@10 of two-stage search against exact search on a real index (a trained model's tokens), at the default
sizes of stage 1 and at the sizes it takes at a larger collection scaled down to this one (--at-videos).

The issue's setup: `prvr synth ROOT --preset charades-small --scale 10` (6,400 videos), indexed with the demo's
trained charades-small model (`prvr index build --split all`, `prvr index ann`), 300 test captions by query id:

    python bench/two_stage_recall.py INDEX ROOT --queries 300 --at-videos 100000 --json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import result_name, write_result  # noqa: E402

from prvr.data.layout import DatasetLayout  # noqa: E402
from prvr.index.ann import ann_sizes  # noqa: E402
from prvr.index.search import Retriever  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", type=Path)
    ap.add_argument("data", type=Path, help="dataset root holding the captions' features")
    ap.add_argument("--split", default="test")
    ap.add_argument("--queries", type=int, default=300, help="the first N captions of the split")
    ap.add_argument("--at-videos", type=int, default=100_000,
                    help="also measure at the candidate ratio stage 1 has at this many videos, scaled down")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = Retriever(args.index)
    if r.ann is None:
        sys.exit(f"{args.index}: no current ANN stage (run `prvr index ann {args.index}`)")
    layout = DatasetLayout(args.data, r.cfg.data.collection, r.cfg.data.visual_feature)
    qids = [ln.split(" ", 1)[0] for ln in layout.caption_file(args.split).read_text().splitlines() if ln][:args.queries]
    n, nlist = len(r), r.ann.ann.nlist
    default = r.ann.sizes()
    big = ann_sizes(args.at_videos, nlist, codes=r.ann.codes)  # what the rule gives there; lists probed: the same share
    ratio = n / args.at_videos
    scaled = ann_sizes(n, nlist, tokens=max(10, round(big.tokens * ratio)), videos=max(10, round(big.videos * ratio)),
                       codes=r.ann.codes)
    settings = {"default": default, f"ratio_at_{args.at_videos}": scaled}
    recall = {k: [] for k in settings}
    ms = {k: [] for k in settings}
    ms_exact = []
    for qid in qids:
        q = r.embed(r.query_features(args.data, qid))
        t = time.perf_counter()
        exact = [h.video_id for h in r.search_repr(q, 10, exact=True)]
        ms_exact.append((time.perf_counter() - t) * 1000)
        for name, s in settings.items():
            t = time.perf_counter()
            approx = r.search_repr(q, 10, exact=False, candidate_tokens=s.tokens, candidate_videos=s.videos,
                                   nprobe=s.nprobe)
            ms[name].append((time.perf_counter() - t) * 1000)
            recall[name].append(len(set(exact) & {h.video_id for h in approx}) / 10)
    result = {"index": str(args.index), "videos": n, "tokens": r.ann.meta["n_tokens"], "nlist": nlist,
              "codes": r.ann.codes, "queries": len(qids), "split": args.split,
              "token_source": "a trained model's tokens (the index's own)"}
    for name, s in settings.items():
        v = np.array(recall[name])
        result[name] = {"candidate_tokens": s.tokens, "candidate_videos": s.videos, "nprobe": s.nprobe,
                        "candidate_video_fraction": round(s.videos / n, 4),
                        "recall_at_10": round(float(v.mean()), 4), "recall_at_10_min": float(v.min()),
                        "queries_below_0.5": int((v < 0.5).sum()),
                        "search_ms_p50": round(statistics.median(ms[name]), 2)}
    result["exact_search_ms_p50"] = round(statistics.median(ms_exact), 2)
    what = f"{r.cfg.data.collection}-{args.index.name}"
    write_result(result_name("two_stage_recall", what, f"{n}v-{len(qids)}q", r.ann.codes, "cpu"), result, args.json)


if __name__ == "__main__":
    main()
