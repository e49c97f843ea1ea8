"""The Ray Train per-worker function: DDP training of AxialNet with validation, checkpoints and early stopping.

Each rank reads its own shard of the store (rows are ids; arrays never travel through Ray). Every
step all-reduces the four loss figures, so all ranks see the same numbers and take the same
decision when a loss is NaN or explodes: they stop before applying that step, and the run ends
with the last good checkpoint intact. Validation runs each rank on a disjoint shard through the
unwrapped module (no collectives inside), then gathers the small per-scan results, so every rank
computes the same validation loss and early-stopping decision.

Each epoch ends with a checkpoint (state.py). On (re)start the latest checkpoint of the run, if
any, is restored: after a worker failure (FailureConfig) or a `--resume` of a killed run.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from ctplatform import tracking
from ctplatform.config import Config
from ctplatform.store import Store
from ctplatform.model.dataset import (
    EpochSampler,
    ShardSampler,
    StoreDataset,
    load_split,
    make_loader,
    scored_labels,
)
from ctplatform.train.distributed import all_gather_objects, all_reduce_sum, weights_rank_spread
from ctplatform.model.device_input import DeviceBatches
from ctplatform.train.accel import Accumulator, autocast, configure_model, no_sync
from ctplatform.model.allowed_regions import allowed_regions
from ctplatform.model.losses import class_loss, mask_loss, total_loss
from ctplatform.model.operating_points import choose_operating_points
from ctplatform.model.metrics import auroc_per_label, auroc_summary, organ_iou
from ctplatform.model.axialnet import AxialNet, build_model, unwrap
from ctplatform.train.state import (
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_EARLY_STOPPED,
    STATUS_RUNNING,
    TrainState,
    cpu_state,
    load_checkpoint,
    save_checkpoint,
)
from ctplatform.train import rundir
from ctplatform.train.tracking import RankZeroTracker

log = logging.getLogger("ctplatform.train")

# ------------------------------------------------------------------------------ one epoch
@dataclass
class EpochResult:
    loss: float
    class_loss: float
    mask_loss: float
    steps: int
    diverged: str | None = None  # why the epoch stopped early, if it did


def train_one_epoch(
    model: torch.nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    device: torch.device,
    state: TrainState,
    progress: "StepProgress | None" = None,
) -> EpochResult:
    """One epoch; an optimizer step every train.accumulate_steps micro-batches (accel.Accumulator)."""
    model.train()
    t = cfg.train
    sums = torch.zeros(4, dtype=torch.float64)
    steps = 0
    label_index = _label_index(loader, t.labels, device)  # train.labels: the labels trained on
    acc = Accumulator(t.accumulate_steps)
    micro_total = len(loader) if hasattr(loader, "__len__") else None
    if micro_total is not None and t.steps_per_epoch is not None:
        micro_total = min(micro_total, t.steps_per_epoch * t.accumulate_steps)
    optimizer.zero_grad(set_to_none=True)
    for n, b in enumerate(DeviceBatches(loader, device)):
        if t.steps_per_epoch is not None and steps >= t.steps_per_epoch:
            break
        last = acc.is_last(None if micro_total is None else micro_total - n)
        with no_sync(model, last):  # DDP all-reduces gradients on the group's last micro-batch only
            with autocast(device, t):
                out = model(b["x"], cam=t.lambda_mask > 0)
            terms = total_loss(
                out.logits, out.hirescam, b["y"], b["region_bits"], b["grid"], t.lambda_mask, t.mask_loss,
                label_index=label_index,
            )
            # Every rank sees the same (summed) figures, so all decide alike on a bad step.
            step_stats = all_reduce_sum(
                torch.stack([terms.total.detach(), terms.cls.detach(), terms.mask.detach(), torch.ones((), device=device)])
                .double()
                .to(device)
            ).cpu()
            n_ranks = float(step_stats[3])
            mean_total = float(step_stats[0]) / n_ranks
            if state.reference_loss is None and math.isfinite(mean_total):
                state.reference_loss = mean_total
            limit = t.explode_factor * max(abs(state.reference_loss or 0.0), 1.0)
            if not math.isfinite(mean_total):
                return EpochResult(*_means(sums), steps, diverged=f"loss is {mean_total} at step {steps + 1}")
            if mean_total > limit:
                return EpochResult(
                    *_means(sums),
                    steps,
                    diverged=f"loss {mean_total:.4g} exceeds {t.explode_factor:g} x the first loss "
                    f"({state.reference_loss:.4g}) at step {steps + 1}",
                )
            (terms.total * acc.loss_scale()).backward()
        acc.add()
        sums += step_stats
        if last:
            acc.step(model, optimizer)
            steps += 1
            if progress is not None:
                progress.step(steps, float(sums[0]) / float(sums[3]))
    return EpochResult(*_means(sums), steps)


class StepProgress:
    """Rank 0's progress lines within an epoch, at most one per `every_s` seconds (epochs on the
    paper's data take hours)."""

    def __init__(self, epoch: int, epochs: int, total: int, every_s: float = 60.0) -> None:
        self.epoch, self.epochs, self.total, self.every_s = epoch, epochs, total, every_s
        self.start = self.last = time.monotonic()

    def step(self, done: int, mean_loss: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = done / (now - self.start)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        log.info(
            "epoch %d/%d: step %d/%d, mean loss %.4f, %.2f steps/s, ~%.0f s left in the epoch",
            self.epoch + 1, self.epochs, done, self.total, mean_loss, rate, eta,
        )


def _label_index(loader: Any, mode: str, device: torch.device) -> torch.Tensor | None:
    """The scored labels (model.dataset.scored_labels) of the loader's split as a device index; None for all 80."""
    if mode == "all":
        return None
    return torch.as_tensor(scored_labels(loader.dataset.index, mode), device=device)


def _means(sums: torch.Tensor) -> tuple[float, float, float]:
    n = float(sums[3])
    if n == 0:
        return (math.nan, math.nan, math.nan)
    return (float(sums[0]) / n, float(sums[1]) / n, float(sums[2]) / n)


@torch.no_grad()
def validate(
    model: AxialNet, loader: Any, cfg: Config, device: torch.device, keep: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Validation loss terms, median AUROC and mean OrganIoU (fixed threshold) over all ranks' shards.

    `keep` (optional) receives the gathered targets `y` and `logits` (for the operating points)."""
    t = cfg.train
    model.eval()
    labels = None if t.labels == "all" else scored_labels(load_split(Store(cfg.store_path), t.splits["train"]), t.labels)
    cls_sum = mask_sum = 0.0
    n = 0
    ys, scores, ious = [], [], []
    for b in DeviceBatches(loader, device):
        with autocast(device, t):
            out = model(b["x"], cam=True)
        logits, cam = out.logits.float(), out.hirescam.float()
        g_true = allowed_regions(b["region_bits"], b["grid"])
        if labels is not None:  # train.labels: score only the labels trained on
            logits, cam, g_true, b["y"] = logits[:, labels], cam[:, labels], g_true[:, labels], b["y"][:, labels]
        for k in range(logits.shape[0]):  # per scan, so the mean does not depend on batch layout
            cls_sum += float(class_loss(logits[k : k + 1], b["y"][k : k + 1]))
            mask_sum += float(mask_loss(cam[k : k + 1], ~g_true[k : k + 1], t.mask_loss))
        n += logits.shape[0]
        ys.append(b["y"].cpu().numpy())
        scores.append(logits.cpu().numpy())
        iou = organ_iou(cam, g_true, positive=b["y"] > 0, thresholds=np.array([t.organ_iou_threshold]))
        ious.append(iou[..., 0][np.isfinite(iou[..., 0])])
    parts = all_gather_objects(
        (cls_sum, mask_sum, n, _cat(ys, 2), _cat(scores, 2), np.concatenate(ious) if ious else np.zeros(0))
    )
    n_all = sum(p[2] for p in parts)
    if n_all == 0:
        raise ValueError("the validation split is empty")
    val_cls = sum(p[0] for p in parts) / n_all
    val_mask = sum(p[1] for p in parts) / n_all
    y_all = np.concatenate([p[3] for p in parts])
    s_all = np.concatenate([p[4] for p in parts])
    iou_all = np.concatenate([p[5] for p in parts])
    if keep is not None:
        keep.update(y=y_all, logits=s_all)
    auroc = auroc_summary(auroc_per_label(y_all, s_all))
    return {
        "val_loss": val_cls + t.lambda_mask * val_mask,
        "val_class_loss": val_cls,
        "val_mask_loss": val_mask,
        "val_auroc_median": auroc["auroc_median"],
        "val_auroc_labels": auroc["auroc_labels"],
        "val_organ_iou": float(iou_all.mean()) if iou_all.size else math.nan,
        "val_scans": n_all,
    }


def _cat(arrays: list[np.ndarray], ndim: int) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros((0,) * (ndim - 1) + (80,), np.float32)


def write_outcome(config: dict[str, Any], status: str, metrics: dict[str, Any], reason: str | None = None) -> None:
    """Rank 0: the attempt's outcome beside the checkpoints, for the driver (see rundir.py)."""
    if config.get("storage_path") and config.get("run_name"):
        payload = {"status": status, "stop_reason": reason, "metrics": metrics}
        rundir.write_json(config["storage_path"], config["run_name"], rundir.OUTCOME, payload)


def make_optimizer(params: Any, cfg: Config) -> torch.optim.Optimizer:
    """train.optimizer: the paper's SGD with momentum, or Adam (the CPU demo: random init, few steps)."""
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum)


# ------------------------------------------------------------------------------ the worker function
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. config: {"cfg": Config as JSON dict, "mlflow_run_id", "tracking_uri"}."""
    cfg = Config.model_validate(config["cfg"])
    t = cfg.train
    worker = _Worker.current()
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    model, optimizer, state, best_state = _build_or_restore(cfg, worker)
    tracker = None
    if worker.rank == 0 and config.get("mlflow_run_id"):
        tracker = RankZeroTracker(config["tracking_uri"], config["mlflow_run_id"])
    _reopen_if_extended(state, t)
    if state.status != STATUS_RUNNING:  # a resumed run that had already finished: redo the final logging
        _finish(config, worker, tracker, model, best_state, state)
        ray.train.report(state.last_metrics)
        return

    data = _Data.open(cfg, worker)
    attempt_start_epoch = state.next_epoch  # > 0 after a recovery or a resume
    for epoch in range(state.next_epoch, t.epochs):
        data.sampler.set_epoch(epoch)
        epoch_start = time.monotonic()
        total_steps = len(data.train) if t.steps_per_epoch is None else min(len(data.train), t.steps_per_epoch)
        progress = StepProgress(epoch, t.epochs, total_steps) if worker.rank == 0 else None
        result = train_one_epoch(model, data.train, optimizer, cfg, worker.device, state, progress)
        if result.diverged:
            _stop_diverged(config, worker, epoch, result.diverged)
            return
        val_arrays: dict[str, np.ndarray] = {}
        val = validate(unwrap(model), data.valid, cfg, worker.device, keep=val_arrays)
        best_state = _advance(state, epoch, val, model, best_state, t, val_arrays, cfg.predict.default_threshold)
        metrics = {
            "epoch": epoch,
            "steps": result.steps,
            "train_loss": result.loss,
            "train_class_loss": result.class_loss,
            "train_mask_loss": result.mask_loss,
            **val,
            "best_val_loss": state.best_val_loss,
            "best_epoch": state.best_epoch,
            "weights_rank_spread": weights_rank_spread(model),
            "attempt_start_epoch": attempt_start_epoch,
            "status": state.status,
        }
        state.last_metrics = metrics
        if worker.rank == 0:
            _log_epoch(epoch, t.epochs, time.monotonic() - epoch_start, result, val, state.status)
        _report_with_checkpoint(metrics, worker, model, optimizer, best_state, state)
        if tracker is not None:
            tracker.log_epoch(metrics, epoch)
        if state.status != STATUS_RUNNING:
            break
    _finish(config, worker, tracker, model, best_state, state)


# ------------------------------------------------------------------------------ its steps, in order
@dataclass(frozen=True)
class _Worker:
    rank: int
    world: int
    device: torch.device

    @classmethod
    def current(cls) -> "_Worker":
        ctx = ray.train.get_context()
        device = ray.train.torch.get_device()
        if isinstance(device, list):
            device = device[0]
        return cls(ctx.get_world_rank(), ctx.get_world_size(), device)


def _build_or_restore(
    cfg: Config, worker: _Worker
) -> tuple[torch.nn.Module, torch.optim.Optimizer, TrainState, dict[str, Any] | None]:
    """The DDP model and its optimizer, from the run's latest checkpoint when there is one:
    (model, optimizer, state, best weights so far)."""
    t = cfg.train
    model = build_model(cfg)
    state, best_state, opt_state = TrainState(), None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model_state, opt_state, best_state, state = load_checkpoint(Path(d))
        model.load_state_dict(model_state)
        if worker.rank == 0:
            log.info("restored checkpoint: continuing at epoch %d", state.next_epoch)
    model = ray.train.torch.prepare_model(configure_model(model, cfg.train, worker.device))
    optimizer = make_optimizer(model.parameters(), cfg)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
        for group in optimizer.param_groups:  # a resume may change them (e.g. a lower lr after divergence)
            group["lr"] = t.lr
            if "momentum" in group:
                group["momentum"] = t.momentum
    return model, optimizer, state, best_state


def _reopen_if_extended(state: TrainState, t: Any) -> None:
    """A resume with more epochs (or patience) extends a finished run."""
    if (
        state.status in (STATUS_COMPLETED, STATUS_EARLY_STOPPED)
        and state.next_epoch < t.epochs
        and state.bad_epochs < t.early_stopping_patience
    ):
        state.status = STATUS_RUNNING


@dataclass
class _Data:
    """This rank's shards of the training and validation splits."""

    sampler: EpochSampler
    train: Any
    valid: Any

    @classmethod
    def open(cls, cfg: Config, worker: _Worker) -> "_Data":
        t = cfg.train
        store = Store(cfg.store_path)
        # Partition QC: volumes flagged t.qc_exclude_flags (e.g. no lungs) are left out (counts logged by the driver).
        train_set = StoreDataset.from_config(cfg, load_split(store, t.splits["train"], t.qc_exclude_flags), augment=True)
        val_set = StoreDataset.from_config(cfg, load_split(store, t.splits["valid"], t.qc_exclude_flags), augment=False)
        sampler = EpochSampler(len(train_set), worker.rank, worker.world, seed=t.seed)
        return cls(
            sampler,
            make_loader(train_set, sampler, t.batch_size, t.loader_workers),
            make_loader(  # validation never overlaps a training epoch: it reuses the slots
                val_set, ShardSampler(len(val_set), worker.rank, worker.world), t.batch_size, t.loader_workers,
                share_slots=train_set.slots,
            ),
        )


def _stop_diverged(config: dict[str, Any], worker: _Worker, epoch: int, reason: str) -> None:
    """End the attempt without a checkpoint: the last good one stays the latest."""
    metrics = {"epoch": epoch, "status": STATUS_DIVERGED}
    if worker.rank == 0:
        log.error("training diverged: %s; the last good checkpoint is kept", reason)
        write_outcome(config, STATUS_DIVERGED, metrics, reason)
    ray.train.report(metrics)


def _advance(
    state: TrainState, epoch: int, val: dict[str, float], model: torch.nn.Module,
    best_state: dict[str, Any] | None, t: Any, val_arrays: dict[str, np.ndarray] | None = None,
    default_threshold: float = 0.5,
) -> dict[str, Any] | None:
    """Record an epoch's validation in `state` (best epoch, patience, status, the best weights'
    operating points from `val_arrays`); returns the best weights."""
    # the same criterion for every lambda (val_loss holds lambda * L_mask: not comparable across models)
    if val[t.selection_metric] < state.best_val_loss:
        state.best_val_loss, state.best_epoch, state.bad_epochs = val[t.selection_metric], epoch, 0
        best_state = cpu_state(model)
        if val_arrays:  # the operating points predict uses: chosen on validation with the kept weights
            th, sources = choose_operating_points(val_arrays["y"], val_arrays["logits"], default_threshold)
            state.best_thresholds, state.best_threshold_sources = [float(x) for x in th], sources
    else:
        state.bad_epochs += 1
    state.next_epoch = epoch + 1
    if state.bad_epochs >= t.early_stopping_patience:
        state.status = STATUS_EARLY_STOPPED
    elif state.next_epoch >= t.epochs:
        state.status = STATUS_COMPLETED
    return best_state


def _log_epoch(epoch: int, epochs: int, seconds: float, result: EpochResult, val: dict[str, float], status: str) -> None:
    log.info(
        "epoch %d/%d (%.0f s): train loss %.4f (class %.4f, mask %.4f); validation loss %.4f, "
        "median AUROC %.3f, OrganIoU %.3f%s",
        epoch + 1, epochs, seconds, result.loss, result.class_loss,
        result.mask_loss, val["val_loss"], val["val_auroc_median"], val["val_organ_iou"],
        "" if status == STATUS_RUNNING else f"; {status.replace('_', ' ')}",
    )


def _report_with_checkpoint(
    metrics: dict[str, Any], worker: _Worker, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    best_state: dict[str, Any] | None, state: TrainState,
) -> None:
    """Every rank reports the epoch; rank 0 attaches the checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        if worker.rank == 0:
            save_checkpoint(Path(tmp), model, optimizer, best_state, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def _finish(
    config: dict[str, Any], worker: _Worker, tracker: "RankZeroTracker | None", model: torch.nn.Module,
    best_state: dict[str, Any] | None, state: TrainState,
) -> None:
    """Log the best model (rank 0's tracker) and write the attempt's outcome for the driver."""
    if tracker is not None and best_state is not None:
        tracker.log_best(
            copy.deepcopy(unwrap(model)), best_state, {tracking.STATUS: state.status}, Config.model_validate(config["cfg"]),
            state.best_thresholds, state.best_threshold_sources,
        )
    if worker.rank == 0:
        write_outcome(config, state.status, state.last_metrics)
