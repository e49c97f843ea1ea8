"""The Ray job behind `ctplatform evaluate`: score a trained run over a split, aggregate, draw, log.

    driver (run_evaluation, one named step each):
      _open_inputs: load the run (MLflow) -> ids of the validation and evaluated splits
      _truth: which scans have true lesion masks (read from the store)
      training_prior: the image-blind prior map from the run's training split of the store (grid
         masks only; skipped with a note when the store has no such split or masks)
      _score_splits: one Ray task per `eval.scans_per_task` volumes (model weights shared once via ray.put; each
         task reads its volumes from the store and returns small per-scan scores; a scan that fails
         is reported and skipped, the job goes on)
      _collect, evaluate_scores: aggregate on the driver; _draw_slice_curves: per-slice curves
      _render_figures: one Ray task per figure scan (Figure 4 panel + NIfTI heatmaps, written by it)
      _write_outputs, log_evaluation: summary tables, predictions keyed by hash -> MLflow (an evaluation run nested under the
         training run; headline metrics also on the training run).

Finished task results are cached on the driver's disk (cache.ScoreCache): a killed evaluation re-run
with the same settings recomputes only what is missing; every run writes a new evaluation run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import ray
from mlflow import MlflowClient

from ctplatform.config import Config, EvalConfig
from ctplatform.eval.cache import ScoreCache
from ctplatform.eval.figures import FigurePick, choose_figure_scans, curves_from_sums
from ctplatform.eval.plots import choose_curve_labels, plot_slice_scores
from ctplatform.eval.prior import training_prior
from ctplatform.eval.report import predictions_frame, scan_key, scan_key_salt, write_summary
from ctplatform.eval.scoring import ScanScores, SliceSums
from ctplatform.eval.summary import Evaluation, evaluate_scores
from ctplatform.eval.tracking import log_evaluation
from ctplatform.eval.truth import TruthSurvey, confounder_label, survey
from ctplatform.eval.worker import render_volume, score_volumes, worker_options
from ctplatform.geometry import ModelGeometry
from ctplatform.labels import label_by_name
from ctplatform.model.checkpoint import load_from_run
from ctplatform.model.dataset import SplitIndex, check_grid_masks, load_split
from ctplatform.runtime import init_ray, setup_mlflow
from ctplatform.store import Store

log = logging.getLogger("ctplatform.eval")


@dataclass
class EvalOutcome:
    run_id: str
    eval_run_id: str | None
    split: str
    out_dir: Path
    metrics: dict[str, float]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (volume_id, error), console only
    notes: list[str] = field(default_factory=list)
    reused_tasks: int = 0  # task results read back from an earlier (killed) run
    tasks: int = 0


# ------------------------------------------------------------------------------ driver side
def _gather(refs: list, desc: str, on_result: Any = None) -> list:
    """Results of Ray tasks in submission order, with a progress bar; on_result(ref, result) as each finishes."""
    from tqdm import tqdm

    done: dict = {}
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="task", disable=not refs) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                done[r] = ray.get(r)
                if on_result is not None:
                    on_result(r, done[r])
                bar.update(1)
    return [done[r] for r in refs]


def run_evaluation(cfg: Config, run_id: str, split: str | None = None) -> EvalOutcome:
    """Evaluate MLflow run `run_id` on `split` (default cfg.eval.split); see the module docstring."""
    e = cfg.eval
    inputs = _open_inputs(cfg, run_id, split or e.split)
    truth = _truth(inputs, e.truth_grid_method)
    cohorts = truth.fingerprints
    out_dir = Path(e.output_dir or (cfg.workdir / "eval")) / run_id / inputs.split
    out_dir.mkdir(parents=True, exist_ok=True)
    prior = training_prior(inputs.store, inputs.run_cfg.train.splits.get("train"), inputs.geometry,
                           inputs.run_cfg.train.grid_variant)
    init_ray(cfg)
    shared = _SharedModel.put(inputs, e, prior.prior)
    cache = ScoreCache(out_dir / ".scores", run_id, shared.state, shared.opts, prior.prior)
    results, reused = _score_splits(inputs, shared, cohorts, cache, e)
    collected = _collect(results, inputs)
    ev = evaluate_scores(
        collected.test_scans, collected.valid_scans, n_boot=e.bootstrap, seed=e.seed,
        convention=e.organ_iou_convention,
        confounder_label=confounder_label(truth.confounder),
    )
    ev.notes += truth.notes + prior.notes
    if collected.failed:
        ev.notes.append(f"{len(collected.failed)} scan(s) failed and were left out (see the job log)")
    salt = scan_key_salt(cfg.workdir)  # local disk only: keys in artifacts cannot be recomputed from ids
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    files = _draw_slice_curves(collected.sums, inputs.split, fig_dir, e.curve_labels)
    picks = choose_figure_scans(collected.test_scans, e.figure_scans, e.figure_labels_per_scan)
    files += _render_figures(inputs, shared, collected.test_scans, picks, fig_dir, out_dir, e.nifti, salt)
    if e.nifti and picks and not (out_dir / "heatmaps").exists():
        ev.notes.append("no NIfTI heatmaps: the stored volumes carry no `affine` attribute (re-ingest to add it)")
    _write_outputs(inputs, run_id, ev, collected, out_dir, e.organ_iou_convention, salt)
    eval_run_id = log_evaluation(cfg, run_id, inputs.split, ev, out_dir, exclude=["scan_keys.local.csv"])
    return EvalOutcome(
        run_id, eval_run_id, inputs.split, out_dir, ev.metrics, collected.failed, ev.notes, reused, len(results)
    )


# ------------------------------------------------------------------------------ its steps, in order
@dataclass
class _Inputs:
    """What the evaluation reads before any task runs: the trained model, its store and splits."""

    model: Any
    run_cfg: Config
    store: Store
    split: str
    valid_split: str
    test_index: SplitIndex
    valid_index: SplitIndex | None
    run_name: str = ""  # the training run's MLflow name (e.g. mask-loss-<hash>): what figures call the model

    @property
    def geometry(self) -> ModelGeometry:
        return self.run_cfg.model.geometry

    def splits(self) -> list[tuple[str, SplitIndex]]:
        """(name, index) of every split to score, the evaluated split first."""
        pairs = [(self.split, self.test_index), (self.valid_split, self.valid_index)]
        return [(name, index) for name, index in pairs if index is not None and len(index)]


def _open_inputs(cfg: Config, run_id: str, split: str) -> _Inputs:
    """Load the run's model and configuration, open its store, read the splits, check the grid masks."""
    setup_mlflow(cfg)
    model, run_cfg = load_from_run(run_id, cfg.tracking_uri)
    store_root = cfg.store if cfg.store is not None else run_cfg.store_path
    store = Store(store_root)
    if not store.exists():
        raise FileNotFoundError(f"no store at {store_root}: pass --store (the store the run was trained on)")
    geometry = run_cfg.model.geometry
    valid_split = cfg.eval.valid_split or run_cfg.train.splits.get("valid", "valid")
    test_index = load_split(store, split)
    if not len(test_index):
        raise ValueError(f"split {split!r} of {store_root} has no labelled scans with status ok")
    valid_index = load_split(store, valid_split) if valid_split != split else None
    check_grid_masks(store, geometry, run_cfg.train.grid_variant, test_index.ids)
    if valid_index is not None and len(valid_index):
        check_grid_masks(store, geometry, run_cfg.train.grid_variant, valid_index.ids)
    run_name = MlflowClient().get_run(run_id).info.run_name or f"run {run_id}"
    return _Inputs(model, run_cfg, store, split, valid_split, test_index, valid_index, run_name)


def _truth(inputs: _Inputs, method: str) -> TruthSurvey:
    """Lesion truth of every scan to score, from the store only (truth/, truth_grid/); without it
    localization is left out and the survey's notes say so."""
    all_ids = [vid for _, index in inputs.splits() for vid in index.ids]
    return survey(inputs.store, all_ids, inputs.geometry, method)


@dataclass
class _SharedModel:
    """The model's weights, put once into Ray's object store, and what every task needs beside them."""

    state: dict[str, Any]
    state_ref: Any
    cfg_json: dict[str, Any]
    opts: dict[str, Any]
    resources: dict[str, Any]
    prior_ref: Any = None  # the image-blind prior map [80, H, D1, D2] in the object store, or None

    @classmethod
    def put(cls, inputs: _Inputs, e: EvalConfig, prior: np.ndarray | None = None) -> "_SharedModel":
        state = {k: v.cpu() for k, v in inputs.model.state_dict().items()}
        resources = {"num_cpus": e.cpus_per_task, "num_gpus": e.gpus_per_task, "memory": int(e.memory_per_task_gb * 2**30)}
        prior_ref = ray.put(prior) if prior is not None else None
        return cls(state, ray.put(state), inputs.run_cfg.model_dump(mode="json"), worker_options(e), resources, prior_ref)


def _score_splits(
    inputs: _Inputs, shared: _SharedModel, cohorts: dict[str, str | None], cache: ScoreCache, e: EvalConfig
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """One task per `scans_per_task` volumes of each split, reusing cached results: ([(split, result)], reused)."""
    score = ray.remote(score_volumes).options(**shared.resources, max_retries=2)
    jobs: list[tuple[str, Path, Any]] = []  # (split, cache file, result or ObjectRef)
    for name, index in inputs.splits():
        sanity = np.zeros(len(index), bool)
        if name == inputs.split:
            sanity[: e.sanity_scans] = True
        for s in range(0, len(index), e.scans_per_task):
            sl = slice(s, s + e.scans_per_task)
            args = (name, index.ids[sl], index.y[sl], index.region_bits[sl], sanity[sl],
                    {v: cohorts[v] for v in index.ids[sl]})
            path = cache.path(*args)
            done = cache.load(path)
            if done is None:
                done = score.remote(shared.state_ref, shared.cfg_json, inputs.store.root, *args, shared.opts,
                                    shared.prior_ref)
            jobs.append((name, path, done))
    reused = sum(not isinstance(j[2], ray.ObjectRef) for j in jobs)
    if reused:
        log.info("resuming: %d of %d task results found in %s", reused, len(jobs), cache.root)
    t0 = time.perf_counter()
    pending = {j[2]: j[1] for j in jobs if isinstance(j[2], ray.ObjectRef)}
    fresh = _gather(list(pending), f"evaluate {inputs.split}", on_result=lambda ref, res: cache.save(pending[ref], res))
    fresh_iter = iter(fresh)
    results = [(j[0], j[2] if not isinstance(j[2], ray.ObjectRef) else next(fresh_iter)) for j in jobs]
    log.info("scored %d tasks in %.1f s (%d reused)", len(jobs), time.perf_counter() - t0, reused)
    return results, reused


@dataclass
class _Collected:
    """The task results, gathered per split."""

    test_scans: list[ScanScores]
    valid_scans: list[ScanScores]
    sums: SliceSums  # per-slice sums of the evaluated split
    failed: list[tuple[str, str]]  # (volume_id, error)


def _collect(results: list[tuple[str, dict[str, Any]]], inputs: _Inputs) -> _Collected:
    """Per-scan scores of each split and the scans that failed; raises when every evaluated scan failed."""
    out = _Collected([], [], SliceSums.zeros(inputs.geometry.grid[0]), [])
    for kind, res in results:
        out.failed += res["errors"]
        if kind == inputs.split:
            out.test_scans += res["scans"]
            out.sums.merge(res["sums"])
        else:
            out.valid_scans += res["scans"]
    for vid, msg in out.failed:
        log.error("scan %s could not be evaluated and is left out: %s", vid, msg)
    if not out.test_scans:
        raise RuntimeError(f"every scan of split {inputs.split!r} failed; see the errors above")
    return out


def _draw_slice_curves(sums: SliceSums, split: str, fig_dir: Path, curve_labels: list[str] | None) -> list[Path]:
    """Per-slice score curves of the configured labels (else of the labels chosen from the counts)."""
    if curve_labels:
        labels = [label_by_name(n).index for n in curve_labels]
    else:
        labels = choose_curve_labels(sums.n_pos, sums.n_neg)
    if not labels:
        return []
    title = f"Per-slice scores C on {split}: mean and 95% interval, with (orange) / without (blue)"
    return [plot_slice_scores(curves_from_sums(sums, labels), fig_dir / "slice_scores.png", title=title)]


def _render_figures(
    inputs: _Inputs,
    shared: _SharedModel,
    test_scans: list[ScanScores],
    picks: list[FigurePick],
    fig_dir: Path,
    out_dir: Path,
    nifti: bool,
    salt: bytes,
) -> list[Path]:
    """Figure 4 panels (and NIfTI heatmaps) of the picked scans: one task per scan, each writes its own files."""
    if not picks:
        return []
    render = ray.remote(render_volume).options(**shared.resources)
    index = inputs.test_index
    pos_of = {vid: i for i, vid in enumerate(index.ids)}
    title = f"{inputs.run_name} on {inputs.split}"  # the model and split, never patient information
    refs = []
    for n, pick in enumerate(picks):
        vid = test_scans[pick.scan].volume_id
        j = pos_of[vid]
        key = scan_key(vid, salt)
        refs.append(
            render.remote(
                shared.state_ref, shared.cfg_json, inputs.store.root, vid, index.y[j], index.region_bits[j],
                pick.labels, str(fig_dir / f"explanations_{n + 1}_{key}.png"),
                str(out_dir / "heatmaps") if nifti else None, key, shared.opts, pick.notes, title,
            )
        )
    return [Path(p) for paths in _gather(refs, "figures") for p in paths]


def _write_outputs(
    inputs: _Inputs, run_id: str, ev: Evaluation, collected: _Collected, out_dir: Path, convention: str, salt: bytes
) -> None:
    """Summary tables, predictions keyed by hash, and the scan key map (local disk only)."""
    geometry = inputs.geometry
    test_scans, valid_scans = collected.test_scans, collected.valid_scans
    context = {
        "training run": run_id,
        "split": f"{inputs.split} ({len(test_scans)} scans)",
        "validation split": f"{inputs.valid_split} ({len(valid_scans)} scans)",
        "model geometry": f"{geometry.name} from input {'x'.join(map(str, geometry.input_shape))}",
        "OrganIoU convention": convention,
    }
    write_summary(ev, out_dir, f"Evaluation on {inputs.split}", context)
    predictions_frame(test_scans + valid_scans, salt).to_parquet(out_dir / "predictions.parquet", index=False)
    # volume id -> key map stays on local disk only (never logged): lets a person find the scan.
    pd.DataFrame(
        {"scan_key": [scan_key(s.volume_id, salt) for s in test_scans], "volume_id": [s.volume_id for s in test_scans]}
    ).to_csv(out_dir / "scan_keys.local.csv", index=False)
