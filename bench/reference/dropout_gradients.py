"""Gradients of one training step of the authors' DreamPRVR and of prvr, with dropout on: same distribution?

    .venv/bin/python bench/reference/dropout_gradients.py --original /tmp/orig-dreamprvr/src \\
        --ref-site-packages /tmp/refvenv-dreamprvr/lib/python3.11/site-packages --draws 40 --hidden 64 --json

The step parity tests compare training by value with every dropout 0; this compares it in distribution with the
authors' dropout (0.25). Both models hold the same weights (the original's initialisation, converted), see the same
batch (the first `--videos` training videos of `prvr synth --preset charades-curve`, read and collated by prvr), in
train mode; each draw is one forward pass, the loss and its gradient, with fresh dropout masks, perturbation draws
and triplet negatives. Arms: the original; prvr as `prvr train` runs it (fused branch bank, activations recomputed
in backward in chunks of `--recompute` videos); prvr's plain reference path (`reference_path()`, nn.Dropout, no
recompute). Per gradient element over the draws, z = (mean_a - mean_b) / sqrt(var_a/R + var_b/R); one distribution
gives z ~ N(0, 1) (mean 0, sd 1) and variance ratios near 1. Prints, per prvr arm against the original, the mean
and sd of z, the median variance ratio and the ratio of the mean gradients' norms, and the tensors with the
largest mean |z|.

The original is imported from `--original` with the patches of `_common_dreamprvr.py`, in prvr's environment; its
one extra dependency (easydict) comes from `--ref-site-packages`, appended to sys.path (after prvr's own packages).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, type=Path)
    ap.add_argument("--ref-site-packages", required=True, type=Path, help="site-packages holding easydict")
    ap.add_argument("--data", type=Path, default=Path("/tmp/prvr-train-curve/data"), help="charades-curve root")
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--recompute", type=int, default=4)
    ap.add_argument("--checkpoint", type=Path, help="a prvr checkpoint whose weights both models take (default: the "
                    "original's initialisation)")
    ap.add_argument("--arms", nargs="+", default=["prvr_training_path", "prvr_reference_path"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.append(str(args.ref_site_packages))
    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)
    from _common_dreamprvr import load_original
    from dreamprvr import charades_cfg

    from prvr.data.datasets import TrainVideos, collate_train
    from prvr.data.layout import DatasetLayout
    from prvr.models import build_loss, build_model
    from prvr.models.base import TrainStep
    from prvr.models.dreamprvr.convert import config_mapping, convert_state_dict, original_name
    from prvr.models.fused import reference_path
    from prvr.models.presets import default_config
    from prvr.synth.synthetic import write_synthetic

    if not (args.data / "charades").exists():
        write_synthetic(args.data, "charades-curve")
    m = load_original(args.original)
    cfg = charades_cfg(args.original)
    cfg["hidden_size"] = args.hidden
    torch.manual_seed(0)
    net = m["models_builder"].get_models(cfg).train()
    criterion = m["loss"].loss(cfg)
    rc = default_config("dreamprvr").apply(config_mapping(cfg))
    model = build_model(rc.model)
    model.load_state_dict(convert_state_dict(net.state_dict(), model))
    if args.checkpoint is not None:  # trained weights into both
        from prvr.models.checkpoint import load_checkpoint

        trained, _, _ = load_checkpoint(args.checkpoint)
        model.load_state_dict(trained.state_dict())
        net.load_state_dict({k: model.state_dict()[original_name(k)] for k in net.state_dict()})
    model.train()
    ours = build_loss(rc.loss, rc.model)
    ds = TrainVideos(DatasetLayout(args.data, "charades"), "train")
    b = collate_train([ds[i] for i in range(args.videos)])
    ob = dict(clip_video_features=b.clip, frame_video_features=b.frames, videos_mask=b.frame_mask, text_feat=b.text,
              text_mask=b.text_mask, text_labels=b.labels.tolist())
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    theirs_p, ours_p = dict(net.named_parameters()), dict(model.named_parameters())

    def flat(grads, params):
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params,
                                                                                                   strict=True)])

    def original_draw():
        outputs = net(ob)
        total, _ = criterion(outputs, ob)
        ps = [theirs_p[n] for n in names]
        return flat(torch.autograd.grad(total, ps, allow_unused=True), ps)

    def prvr_draw(reference: bool, recompute: int):
        model.set_recompute(recompute)
        with reference_path(reference):
            total, _ = ours(model.forward_train(b), b.labels, TrainStep())
        ps = [ours_p[original_name(n)] for n in names]
        return flat(torch.autograd.grad(total, ps, allow_unused=True), ps)

    arms = {"original": original_draw, "prvr_training_path": lambda: prvr_draw(False, args.recompute),
            "prvr_reference_path": lambda: prvr_draw(True, 0)}
    arms = {k: v for k, v in arms.items() if k == "original" or k in args.arms}
    draws, seconds = {}, {}
    for name, fn in arms.items():
        t0 = time.time()
        torch.manual_seed(11)
        draws[name] = torch.stack([fn() for _ in range(args.draws)]).double()  # (R, n_params)
        seconds[name] = round(time.time() - t0, 1)
    sizes = [theirs_p[n].numel() for n in names]
    a, R = draws["original"], args.draws
    result = {"what": "per-element z of mean gradients, prvr arm vs the original, train mode, dropout 0.25",
              "weights": str(args.checkpoint) if args.checkpoint else "the original's initialisation (seed 0)",
              "hidden_size": args.hidden, "videos": args.videos, "queries": len(b.labels), "draws": R,
              "recompute_videos": args.recompute, "seconds": seconds, "arms": {}}
    for arm in [a for a in arms if a != "original"]:
        c = draws[arm]
        keep = (a.var(0) > 1e-20) & (c.var(0) > 1e-20)
        z = (a.mean(0) - c.mean(0)) / torch.sqrt(a.var(0) / R + c.var(0) / R)
        per_tensor, i = [], 0
        for n, s in zip(names, sizes, strict=True):
            zz = z[i:i + s][keep[i:i + s]]
            i += s
            if len(zz):
                per_tensor.append((round(float(zz.abs().mean()), 3), n))
        per_tensor.sort(reverse=True)
        result["arms"][arm] = {
            "elements": int(keep.sum()), "z_mean": round(float(z[keep].mean()), 4),
            "z_sd": round(float(z[keep].std()), 4),
            "var_ratio_median": round(float((c.var(0)[keep] / a.var(0)[keep]).median()), 4),
            "mean_gradient_norm_ratio": round(float(c.mean(0).norm() / a.mean(0).norm()), 4),
            "largest_mean_abs_z": per_tensor[:5]}
        r = result["arms"][arm]
        print(f"{arm} vs original: z mean {r['z_mean']:.3f} sd {r['z_sd']:.3f} over {r['elements']} elements, "
              f"variance ratio (median) {r['var_ratio_median']:.3f}, |mean gradient| ratio "
              f"{r['mean_gradient_norm_ratio']:.3f}")
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    tag = "" if args.checkpoint is None else "_trained"
    out = REPO / "bench" / "results" / f"dropout_gradients_h{args.hidden}_v{args.videos}_r{R}{tag}_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
