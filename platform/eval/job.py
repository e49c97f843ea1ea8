"""The Ray job behind `ctplatform evaluate`: score a trained run over a split, aggregate, draw, log.

    driver: load the run (MLflow) -> ids of the validation and evaluated splits
      -> one Ray task per `eval.scans_per_task` volumes (model weights shared once via ray.put; each
         task reads its volumes from the store and returns small per-scan scores; a scan that fails
         is reported and skipped, the job goes on)
      -> aggregate on the driver (summary.evaluate_scores), per-slice curves
      -> one Ray task per figure scan (Figure 4 panel + NIfTI heatmaps, written by the task)
      -> summary tables, predictions keyed by hash -> MLflow (an evaluation run nested under the
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

from ctplatform.config import Config
from ctplatform.eval.cache import ScoreCache
from ctplatform.eval.scoring import ScanScores, SliceSums
from ctplatform.eval.worker import render_volume, score_volumes, worker_options

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
    import ray
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
    import ray

    from ctplatform.eval.figures import choose_figure_scans, curves_from_sums
    from ctplatform.eval.plots import choose_curve_labels, plot_slice_scores
    from ctplatform.eval.report import predictions_frame, scan_key, write_summary
    from ctplatform.eval.summary import evaluate_scores
    from ctplatform.eval.tracking import log_evaluation
    from ctplatform.eval.truth import confounder_label, survey
    from ctplatform.labels import label_by_name
    from ctplatform.runtime import init_ray, setup_mlflow
    from ctplatform.store import Store
    from ctplatform.model.dataset import check_grid_masks, load_split
    from ctplatform.model.checkpoint import load_from_run

    e = cfg.eval
    split = split or e.split
    setup_mlflow(cfg)
    model, run_cfg = load_from_run(run_id, cfg.tracking_uri)
    store_root = cfg.store if cfg.store is not None else run_cfg.store_path
    store = Store(store_root)
    if not store.exists():
        raise FileNotFoundError(f"no store at {store_root}: pass --store (the store the run was trained on)")
    geometry = run_cfg.model.geometry
    valid_split = e.valid_split or run_cfg.train.splits.get("valid", "valid")
    test_index = load_split(store, split)
    if not len(test_index):
        raise ValueError(f"split {split!r} of {store_root} has no labelled scans with status ok")
    valid_index = load_split(store, valid_split) if valid_split != split else None
    check_grid_masks(store, geometry, run_cfg.train.grid_variant, test_index.ids)
    if valid_index is not None and len(valid_index):
        check_grid_masks(store, geometry, run_cfg.train.grid_variant, valid_index.ids)
    all_ids = test_index.ids + (valid_index.ids if valid_index is not None else [])
    # Lesion truth comes from the store only (truth/, truth_grid/); without it localization is left out.
    truth = survey(store, all_ids, geometry, e.truth_grid_method)
    cohorts = truth.fingerprints

    out_dir = Path(e.output_dir or (cfg.workdir / "eval")) / run_id / split
    out_dir.mkdir(parents=True, exist_ok=True)
    init_ray(cfg)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    state_ref = ray.put(state)
    cfg_json = run_cfg.model_dump(mode="json")
    opts = worker_options(e)
    resources = {"num_cpus": e.cpus_per_task, "num_gpus": e.gpus_per_task, "memory": int(e.memory_per_task_gb * 2**30)}
    score = ray.remote(score_volumes).options(**resources, max_retries=2)
    cache = ScoreCache(out_dir / ".scores", run_id, state, opts)
    jobs: list[tuple[str, Path, Any]] = []  # (split, cache file, result or ObjectRef)
    for name, index in [(split, test_index), (valid_split, valid_index)]:
        if index is None or not len(index):
            continue
        sanity = np.zeros(len(index), bool)
        if name == split:
            sanity[: e.sanity_scans] = True
        for s in range(0, len(index), e.scans_per_task):
            sl = slice(s, s + e.scans_per_task)
            args = (name, index.ids[sl], index.y[sl], index.region_bits[sl], sanity[sl],
                    {v: cohorts[v] for v in index.ids[sl]})
            path = cache.path(*args)
            done = cache.load(path)
            jobs.append((name, path, done if done is not None else score.remote(state_ref, cfg_json, store_root, *args, opts)))
    reused = sum(not isinstance(j[2], ray.ObjectRef) for j in jobs)
    if reused:
        log.info("resuming: %d of %d task results found in %s", reused, len(jobs), cache.root)
    t0 = time.perf_counter()
    pending = {j[2]: j[1] for j in jobs if isinstance(j[2], ray.ObjectRef)}
    fresh = _gather(list(pending), f"evaluate {split}", on_result=lambda ref, res: cache.save(pending[ref], res))
    fresh_iter = iter(fresh)
    results = [(j[0], j[2] if not isinstance(j[2], ray.ObjectRef) else next(fresh_iter)) for j in jobs]
    log.info("scored %d tasks in %.1f s (%d reused)", len(jobs), time.perf_counter() - t0, reused)

    test_scans: list[ScanScores] = []
    valid_scans: list[ScanScores] = []
    sums = SliceSums.zeros(geometry.grid[0])
    failed: list[tuple[str, str]] = []
    for kind, res in results:
        failed += res["errors"]
        if kind == split:
            test_scans += res["scans"]
            sums.merge(res["sums"])
        else:
            valid_scans += res["scans"]
    for vid, msg in failed:
        log.error("scan %s could not be evaluated and is left out: %s", vid, msg)
    if not test_scans:
        raise RuntimeError(f"every scan of split {split!r} failed; see the errors above")

    ev = evaluate_scores(
        test_scans, valid_scans, n_boot=e.bootstrap, seed=e.seed, convention=e.organ_iou_convention,
        confounder_label=confounder_label(truth.confounder),
    )
    ev.notes += truth.notes
    if failed:
        ev.notes.append(f"{len(failed)} scan(s) failed and were left out (see the job log)")

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    if e.curve_labels:
        labels = [label_by_name(n).index for n in e.curve_labels]
    else:
        labels = choose_curve_labels(sums.n_pos, sums.n_neg)
    files: list[Path] = []
    if labels:
        files.append(
            plot_slice_scores(
                curves_from_sums(sums, labels),
                fig_dir / "slice_scores.png",
                title=f"Per-slice scores C on {split}: mean and 95% interval, with (orange) / without (blue)",
            )
        )
    # Figure 4 panels: one task per scan, each writes its own files.
    render = ray.remote(render_volume).options(**resources)
    picks = choose_figure_scans(test_scans, e.figure_scans, e.figure_labels_per_scan)
    pos_of = {vid: i for i, vid in enumerate(test_index.ids)}
    fig_refs = []
    for n, (i, labs) in enumerate(picks):
        vid = test_scans[i].volume_id
        j = pos_of[vid]
        key = scan_key(vid)
        fig_refs.append(
            render.remote(
                state_ref, cfg_json, store_root, vid, test_index.y[j], test_index.region_bits[j], labs,
                str(fig_dir / f"explanations_{n + 1}_{key}.png"),
                str(out_dir / "heatmaps") if e.nifti else None, key, opts,
            )
        )
    for paths in _gather(fig_refs, "figures") if fig_refs else []:
        files += [Path(p) for p in paths]
    if e.nifti and picks and not (out_dir / "heatmaps").exists():
        ev.notes.append("no NIfTI heatmaps: the stored volumes carry no `affine` attribute (re-ingest to add it)")

    context = {
        "training run": run_id,
        "split": f"{split} ({len(test_scans)} scans)",
        "validation split": f"{valid_split} ({len(valid_scans)} scans)",
        "model geometry": f"{geometry.name} from input {'x'.join(map(str, geometry.input_shape))}",
        "OrganIoU convention": e.organ_iou_convention,
    }
    write_summary(ev, out_dir, f"Evaluation on {split}", context)
    pred_path = out_dir / "predictions.parquet"
    predictions_frame(test_scans + valid_scans).to_parquet(pred_path, index=False)
    # volume id -> key map stays on local disk only (never logged): lets a person find the scan.
    pd.DataFrame(
        {"scan_key": [scan_key(s.volume_id) for s in test_scans], "volume_id": [s.volume_id for s in test_scans]}
    ).to_csv(out_dir / "scan_keys.local.csv", index=False)
    eval_run_id = log_evaluation(cfg, run_id, split, ev, out_dir, exclude=["scan_keys.local.csv"])
    return EvalOutcome(run_id, eval_run_id, split, out_dir, ev.metrics, failed, ev.notes, reused, len(jobs))
