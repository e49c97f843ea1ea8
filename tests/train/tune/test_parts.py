"""The sweep's pure parts: search space, trial configuration, resources and concurrency, the result
table, trial statuses and the ASHA guard (no Ray cluster needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ctplatform.config import load_config
from ctplatform.train.tune.sweep import TrainRunASHA, resolve_sweep
from ctplatform.train.tune.space import (
    concurrent_trials,
    driver_bundle,
    n_trials,
    search_space,
    trial_config,
    trial_label,
    varied_params,
)
from ctplatform.train.tune.table import TrialRow, best_trial, sweep_markdown, table5, trials_frame
from ctplatform.train.tune.tracking import TrialView, _status


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


def test_grid_space_covers_every_combination_and_trials_replace_only_their_fields() -> None:
    cfg = _cfg("tune.lambdas=[0, 0.5]", "tune.seeds=[1, 2]", "train.epochs=3")
    space = search_space(cfg)
    assert space["grid_variant"] == {"grid_search": list(cfg.tune.variants)}
    assert space["lambda_mask"] == {"grid_search": [0.0, 0.5]}
    assert space["lr"] == {"grid_search": [cfg.train.lr]} and space["seed"] == {"grid_search": [1, 2]}
    assert n_trials(cfg) == 6 * 2 * 2
    assert varied_params(cfg) == {"grid_variant", "lambda_mask", "seed"}
    trial = trial_config(cfg, {"grid_variant": "area-dilated", "lambda_mask": 0.5, "lr": 0.01, "seed": 2})
    assert (trial.train.grid_variant, trial.train.lambda_mask, trial.train.lr, trial.train.seed) == ("area-dilated", 0.5, 0.01, 2)
    assert trial.train.epochs == 3 and cfg.train.grid_variant == "nearest"  # the base is untouched
    with pytest.raises(ValueError):
        trial_config(cfg, {"grid_variant": "bicubic"})
    assert trial_label({"grid_variant": "area", "lambda_mask": 1 / 3, "lr": 1e-3, "seed": 2}, {"seed"}) == "area-lambda0p333-seed2"


def test_random_space_and_inconsistent_settings() -> None:
    cfg = _cfg("tune.search=random", "tune.num_samples=5", "tune.lr_range=[1e-4, 1e-2]")
    space = search_space(cfg)
    assert n_trials(cfg) == 5 and "lr" in varied_params(cfg)
    assert 1e-4 <= space["lr"].sample() <= 1e-2
    assert space["lambda_mask"].sample() in cfg.tune.lambdas
    with pytest.raises(ValueError, match="lr_range needs tune.search=random"):
        search_space(_cfg("tune.lr_range=[1e-4, 1e-2]"))
    with pytest.raises(ValueError, match="unknown or none"):
        _cfg("tune.variants=[nearest, cubic]")
    with pytest.raises(ValueError, match="not reported per epoch"):
        _cfg("tune.metric=accuracy")
    with pytest.raises(ValueError, match="trial_memory_gb"):
        _cfg("tune.trial_memory_gb=0")


def test_concurrency_is_bounded_by_what_a_trial_holds_and_a_trial_that_cannot_fit_is_refused() -> None:
    two_workers = _cfg("train.num_workers=2", "train.cpus_per_worker=1")
    assert driver_bundle(two_workers) == {"memory": float(2**29)}  # the driver takes no CPU
    cluster = {"CPU": 2.0, "memory": 8.0 * 2**30}
    assert concurrent_trials(two_workers, cluster, use_gpu=False) == 1
    assert concurrent_trials(_cfg("train.num_workers=1"), cluster, use_gpu=False) == 2
    # GPUs bound it when the workers use them.
    assert concurrent_trials(_cfg("train.num_workers=2"), {"CPU": 64.0, "GPU": 8.0, "memory": 1e12}, use_gpu=True) == 4
    # A driver CPU on top of two 1-CPU workers would wait forever on 2 CPUs: refused with the fix named.
    with pytest.raises(ValueError, match="tune.trial_cpus"):
        concurrent_trials(_cfg("train.num_workers=2", "tune.trial_cpus=1"), cluster, use_gpu=False)
    # An explicit bound is taken as given (an autoscaling cluster grows to it).
    assert concurrent_trials(_cfg("train.num_workers=2", "tune.max_concurrent_trials=3"), cluster, use_gpu=False) == 3


def _row(variant: str, lam: float, status: str = "completed", auroc: float = 0.6, iou: float = 0.3, **kw) -> TrialRow:
    base = dict(trial_id=f"t-{variant}-{lam}-{kw.get('seed', 0)}", run_name="r", grid_variant=variant, lambda_mask=lam,
                lr=1e-3, seed=0, status=status, epochs=2, best_epoch=1, val_auroc_median=auroc, val_organ_iou=iou,
                val_class_loss=0.5, val_loss=0.6, metric_best=0.5)
    base.update(kw)
    return TrialRow(**base)


def test_table5_shape_marks_asha_and_lists_failed_trials() -> None:
    rows = [
        _row("nearest", 0.0, auroc=0.61),
        _row("nearest", 1 / 3, auroc=0.65, status="stopped_asha"),
        _row("trilinear-dilated", 0.0, auroc=0.70, seed=0),
        _row("trilinear-dilated", 0.0, auroc=0.72, seed=1),
        _row("area", 1 / 3, status="failed", auroc=math.nan, iou=math.nan, metric_best=math.nan, error="MissingGridMaskError: x"),
        _row("area-dilated", 1 / 3, status="diverged", auroc=math.nan, metric_best=math.nan),
    ]
    t = table5(rows, "val_auroc_median")
    assert list(t.index) == [("nearest", "no"), ("trilinear", "yes"), ("area", "no"), ("area", "yes")]
    assert list(t.columns) == ["lambda=0", "lambda=0.333"]
    assert t.loc[("nearest", "no"), "lambda=0"] == "0.610"
    assert t.loc[("nearest", "no"), "lambda=0.333"] == "0.650†"
    assert t.loc[("trilinear", "yes"), "lambda=0"] == "0.710 ± 0.014 (n=2)"
    assert t.loc[("area", "no"), "lambda=0.333"] == "failed" and t.loc[("area", "no"), "lambda=0"] == "-"
    assert t.loc[("area", "yes"), "lambda=0.333"] == "diverged"
    md = sweep_markdown("s", rows, "val_class_loss", "min")
    trial_lines = md.split("## Trials", 1)[1].splitlines()
    assert sum("| failed |" in line and "MissingGridMaskError: x" in line for line in trial_lines) == 1
    assert len(trials_frame(rows)) == len(rows)  # every trial, whatever its status
    best = best_trial([*rows, _row("area", 0.0, metric_best=0.4)], "min")
    assert best is not None and best.grid_variant == "area" and best.lambda_mask == 0.0
    assert best_trial(rows, "max").metric_best == 0.5
    assert best_trial([rows[4]], "min") is None


def test_trial_status_from_tune_train_and_the_trial_record() -> None:
    def view(tune_status: str, last: dict) -> TrialView:
        return TrialView("t", {}, tune_status, last)

    assert _status(view("ERROR", {}), {}, None) == "failed"
    assert _status(view("RUNNING", {"status": "running"}), {}, None) == "running"
    assert _status(view("TERMINATED", {"status": "running"}), {}, {"status": "completed"}) == "completed"
    assert _status(view("TERMINATED", {"status": "early_stopped"}), {}, None) == "early_stopped"
    assert _status(view("TERMINATED", {"status": "running", "epoch": 1}), {}, None) == "stopped_asha"
    assert _status(view("TERMINATED", {"epoch": 0, "status": "diverged"}), {}, None) == "diverged"
    # After Ctrl-C Tune leaves started trials PENDING: those that ran are "interrupted".
    assert _status(view("PENDING", {}), {"attempts": 1}, None) == "interrupted"
    assert _status(view("PENDING", {}), {}, None) == "pending"


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def test_asha_never_stops_a_run_that_reported_its_last_epoch() -> None:
    asha = TrainRunASHA(time_attr="epochs_done", max_t=4, grace_period=1, reduction_factor=2)
    asha.set_search_properties("val_class_loss", "min")
    trials = [_Trial(f"t{k}") for k in range(3)]
    for t in trials:
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, trials[0], {"epochs_done": 1, "val_class_loss": 0.1, "status": "running"}) == "CONTINUE"
    # A worse trial at the same rung is stopped while its run would go on ...
    assert asha.on_trial_result(None, trials[1], {"epochs_done": 1, "val_class_loss": 0.9, "status": "running"}) == "STOP"
    # ... but not when that report was its last (early stopping ended it): it ends by itself.
    assert asha.on_trial_result(None, trials[2], {"epochs_done": 1, "val_class_loss": 0.9, "status": "early_stopped"}) == "CONTINUE"
    # At max_t plain ASHA says STOP; the run has completed, so the trial is left to end by itself.
    assert asha.on_trial_result(None, trials[0], {"epochs_done": 4, "val_class_loss": 0.1, "status": "completed"}) == "CONTINUE"


def test_sweep_names(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no earlier sweep"):
        resolve_sweep(str(tmp_path), resume=True, name=None)
    name, record = resolve_sweep(str(tmp_path), resume=False, name=None)
    assert name.startswith("sweep-") and record is None
