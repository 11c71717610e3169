"""Training loop of the original protocol: per-epoch validation, best/last checkpoints, early stopping on
validation SumR, hard negatives from a given epoch, exact resume at epoch boundaries."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prvr import dist
from prvr.config import RunConfig, to_yaml
from prvr.data.datasets import SplitIndex, TrainVideos, check_dims, collate_train, screen_split
from prvr.data.layout import DatasetLayout
from prvr.device import bf16_autocast
from prvr.errors import DataError, NonFiniteError, PrvrError
from prvr.eval.evaluator import evaluate
from prvr.io import write_text_atomic
from prvr.models import build_loss, build_model
from prvr.models.base import BatchShare, TrainStep, sharing
from prvr.models.checkpoint import restore_training, save_checkpoint
from prvr.runtime import allocator_for_training
from prvr.train.distributed import GlobalBatches, broadcast_decision, gather_outputs, wrap
from prvr.train.optim import make_optimizer
from prvr.train.rundir import (
    absolute_paths,
    check_resumable,
    check_run_dir,
    clear_run,
    discard_failed_run,
    read_metrics,
    rewrite_metrics,
    saved_config,
)


@dataclass
class TrainResult:
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    out_dir: Path


DRAWS_SEED = 0x9E3779B9  # added to the shuffle's seed for the training draws' generator (see `epoch_seeds`)


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """(shuffle seed, draws seed) of an epoch: the batch order's generator and the generator of the training draws
    (textual perturbation, triplet negatives). The CPU generator (mt19937) keeps only the low 32 bits of a seed, so
    the offset lies below 2^32: with 2^40 both generators of an epoch gave one and the same stream on CPU (and epoch
    0 of seed 0 the stream of the global RNG that drew the initial weights)."""
    shuffle = seed * 1000 + epoch
    return shuffle, shuffle + DRAWS_SEED


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_step(model, criterion, optimizer, batch, step: TrainStep, device: torch.device | str = "cpu",
               amp: bool = False, check=None, share: BatchShare | None = None, forward=None,
               gather=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step, in the original's order: forward, loss, backward, BertAdam step (clipping and the
    schedule inside). `step.draws` (tests) replaces the random draws of the model and its loss; `check(loss,
    terms)` runs before anything is updated (the loop stops at a non-finite loss there). Distributed training
    (`prvr.train.distributed`): `share` places the per-item random draws, `forward` is the DDP-wrapped training
    pass, `gather(outputs, labels)` gives the global batch's outputs and labels to the loss."""
    forward = forward or model.forward_train
    with bf16_autocast(device, amp), sharing(share):
        outputs = forward(batch) if step.draws is None else forward(batch, draws=step.draws)
        labels = batch.labels
        if gather is not None:
            outputs, labels = gather(outputs, labels)
        loss, terms = criterion(outputs, labels, step)
    if check is not None:
        check(loss, terms)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, terms


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(cfg: RunConfig, out_dir: str | Path, device: torch.device | str = "cpu", resume: bool = False,
          progress: bool = True, log=print, overwrite: bool = False, skip_bad: bool = False) -> TrainResult:
    """Train `cfg` into `out_dir`. An existing run there is refused unless `resume` (continue it; `cfg` may change
    train/data values, listed in the log) or `overwrite` (start over). Every check runs before anything is written;
    a fresh run that fails before its first checkpoint leaves nothing behind. `skip_bad`: leave out videos and
    captions that are empty, of the wrong width or not finite (with a warning each) instead of stopping."""
    out_dir = Path(out_dir)
    if cfg.data.root is None:
        raise PrvrError("no data root: pass --data ROOT")
    absolute_paths(cfg)
    check_run_dir(out_dir, resume, overwrite)
    layout = DatasetLayout(cfg.data.root, cfg.data.collection, cfg.data.visual_feature)
    splits = layout.splits_present()
    if "train" not in splits:
        raise PrvrError(f"{layout.caption_file('train')}: training caption file not found")
    val_split = "val" if "val" in splits else "test"
    indexes = {s: SplitIndex.from_layout(layout, s) for s in ("train", val_split)}
    check_dims(layout, indexes["train"], cfg.model.visual_dim, cfg.model.text_dim, "the run's config")
    if resume:
        changes = check_resumable(saved_config(out_dir), cfg, out_dir)
        if changes:
            log("resume with changes: " + "; ".join(changes))
    if skip_bad:
        indexes = {s: screen_split(layout, i, cfg.model.visual_dim, cfg.model.text_dim, True, log)
                   for s, i in indexes.items()}
    created = not out_dir.exists()
    try:
        return _run(cfg, out_dir, device, resume, progress, log, overwrite, layout, val_split, indexes)
    except BaseException:
        if not resume and dist.is_main():
            discard_failed_run(out_dir, created)
        raise


def _run(cfg: RunConfig, out_dir: Path, device, resume: bool, progress: bool, log, overwrite: bool,
         layout: DatasetLayout, val_split: str, indexes: dict[str, SplitIndex]) -> TrainResult:
    tc, mc = cfg.train, cfg.model
    main = dist.is_main()  # under torchrun only rank 0 writes and logs; every rank trains its share
    log = log if main else (lambda *_: None)
    seed_everything(tc.seed + dist.rank())  # dropout differs per rank; rank 0's initial weights are broadcast
    model = build_model(mc, device)
    model.set_recompute(tc.recompute_videos)
    allocator_for_training(model.training_keeps_freed_memory)
    ddp = wrap(model, torch.device(device)) if dist.sharded() else None
    dataset = TrainVideos(layout, "train", mc.map_size, mc.max_ctx_l, mc.max_desc_l, index=indexes["train"],
                          visual_dim=mc.visual_dim, text_dim=mc.text_dim)
    if len(dataset) == 0:
        raise DataError(f"{layout.caption_file('train')}: no usable training videos")
    query_counts = [len(q) for q in dataset.video_queries]
    steps_per_epoch = len(GlobalBatches(query_counts, tc.batch_videos, 0, 0, dist.world()))
    optimizer = make_optimizer(model, tc, steps_per_epoch)
    criterion = build_loss(cfg.loss, mc)
    state = {"epoch": -1, "best_sumr": -1.0, "best_epoch": -1, "best_metrics": {}, "es_cnt": 0}
    last_path, best_path, log_path = out_dir / "last.safetensors", out_dir / "best.safetensors", out_dir / "metrics.jsonl"
    if resume:
        state.update(restore_training(last_path, model, optimizer))
        log(f"resumed from epoch {state['epoch']} (best SumR {state['best_sumr']:.1f} at epoch {state['best_epoch']})")
    elif overwrite and main:
        clear_run(out_dir)
    records = read_metrics(log_path, state["epoch"]) if resume else []  # epochs after the checkpoint are redone
    dist.barrier()  # every rank has read the run before rank 0 writes to it
    tb = None
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "config.yaml", to_yaml(cfg))
        tb = _tensorboard(out_dir)
    start = state["epoch"] + 1
    end = tc.epochs if tc.max_epochs is None else min(tc.epochs, tc.max_epochs)  # a cap; t_total keeps `epochs`
    for epoch in range(start, end):
        t0 = time.time()
        hard = epoch >= tc.hard_negative_start_epoch
        # the single process's shuffle (DataLoader(shuffle=True) with this seed), split over the ranks
        shuffle_seed, draws_seed = epoch_seeds(tc.seed, epoch)
        batches = GlobalBatches(query_counts, tc.batch_videos, shuffle_seed, dist.rank(), dist.world())
        if batches.dropped and epoch == start:
            log(f"note: each epoch leaves out its last {batches.dropped} video(s), fewer than the {dist.world()} ranks")
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_train, num_workers=tc.num_workers)
        draws = torch.Generator(device=torch.device(device)).manual_seed(draws_seed)
        model.train()
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not (progress and main), leave=False)
        for step, batch in enumerate(bar):
            b = batch.to(device)
            gather = None if ddp is None else partial(gather_outputs, n_videos=len(b.clip))
            loss, terms = train_step(model, criterion, optimizer, b, TrainStep(epoch, hard, generator=draws), device,
                                     tc.amp, check=partial(check_finite_loss, epoch=epoch, step=step,
                                                           last_path=last_path),
                                     share=batches.share(step, draws), forward=ddp, gather=gather)
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        check_finite_weights(model, epoch, last_path)
        train_seconds = time.time() - t0  # the epoch's training steps alone (`seconds` adds validation and saving)
        train_terms = {k: v / len(loader) for k, v in sums.items()}
        val = evaluate(model, layout, val_split, tc.eval_context_bsz, tc.eval_query_bsz, device,
                       num_workers=tc.num_workers, amp=tc.amp, index=indexes[val_split]).metrics
        improved = val["SumR"] > state["best_sumr"]
        state["epoch"] = epoch
        if improved:
            state.update(best_sumr=val["SumR"], best_epoch=epoch, best_metrics=val, es_cnt=0)
            if main:
                save_checkpoint(best_path, model, cfg, {"epoch": epoch, "split": val_split, "metrics": val})
        else:
            state["es_cnt"] += 1
        record = {"epoch": epoch, "lr": optimizer.current_lr(), "hard_negative": hard, "train": train_terms,
                  val_split: val, "seconds": round(time.time() - t0, 2),
                  "train_seconds": round(train_seconds, 2)}
        records.append(record)
        if main:
            rewrite_metrics(log_path, records)  # whole and atomic, before the checkpoint (a resume redoes later epochs)
            save_checkpoint(last_path, model, cfg, state, optimizer)
        if tb is not None:
            for k, v in train_terms.items():
                tb.add_scalar(f"train/{k}", v, epoch)
            for k, v in val.items():
                tb.add_scalar(f"{val_split}/{k}", v, epoch)
        log(f"epoch {epoch}: loss {train_terms['loss']:.4f}  {val_split} " +
            " ".join(f"{k} {v:.1f}" for k, v in val.items()) + ("  *" if improved else ""))
        if broadcast_decision(state["es_cnt"] > tc.max_es_cnt):  # every rank stops
            log(f"early stop: no {val_split} SumR improvement for {state['es_cnt']} epochs")
            break
    if end < tc.epochs and state["epoch"] == end - 1 and state["es_cnt"] <= tc.max_es_cnt:
        log(f"stopped at train.max_epochs={tc.max_epochs} of a {tc.epochs}-epoch schedule")
    if tb is not None:
        tb.close()
    dist.barrier()  # rank 0's last writes are done when any rank returns
    return TrainResult(state["best_epoch"], state["best_metrics"], state["epoch"] + 1, out_dir)


def check_finite_loss(loss: torch.Tensor, terms: dict[str, torch.Tensor], epoch: int, step: int,
                      last_path: Path) -> None:
    """Stop at the first non-finite loss, before it updates the weights."""
    value = float(loss.detach())
    if math.isfinite(value):
        return
    bad = [k for k, v in terms.items() if not math.isfinite(float(v))]
    kept = f"the last good checkpoint is {last_path}" if last_path.exists() else "no checkpoint was written"
    raise NonFiniteError(f"epoch {epoch}, step {step}: the training loss is {value} (non-finite terms: "
                         f"{', '.join(bad) or 'none, their weighted sum overflowed'}); stopped before the update, "
                         f"{kept} (lower train.lr, or check the data with `prvr data check`)")


def check_finite_weights(model: torch.nn.Module, epoch: int, last_path: Path) -> None:
    """Weights that became NaN/Inf (from a finite loss, e.g. an exploding update) are never validated or saved."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        kept = f"the last good checkpoint is {last_path}" if last_path.exists() else "no checkpoint was written"
        raise NonFiniteError(f"epoch {epoch}: {len(bad)} weight tensors became NaN or Inf, e.g. {bad[0]!r}; "
                             f"nothing was saved for this epoch, {kept} (lower train.lr or train.grad_clip)")
