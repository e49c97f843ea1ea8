"""The stages `ctplatform demo` chains, in one Ray session, each reusing what an earlier run finished.

    phantom cohort -> ingest -> partition -> label reports (SARLE) -> train lambda=0 -> train lambda>0
      -> evaluate both on each of demo.eval_splits -> compare them -> the table (demo_table.py)

Everything of one demo setting lives in `<workdir>/demo/<key>/` (cohort, store, Ray Train runs,
evaluation files); MLflow is the workdir's (`sqlite:///<workdir>/mlflow.db` unless configured).
Reuse: the phantom, ingest, partition and labelling stages resume by themselves (finished items are
skipped). A training run is looked up in MLflow by a hash of everything that shapes it (cohort,
ingest, partition, model and train settings, lambda) tagged on the run when it finished; a killed
run with the same hash (same Ray Train run name) is resumed from its last checkpoint. An evaluation
is reused when one of that training run on that split, with the same eval settings, finished; a
comparison when one of those two evaluations exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctplatform import tracking
from ctplatform.config import Config
from ctplatform.demo.table import RELIANCE_METRIC, reliance_from_predictions
from ctplatform.eval.compare.job import comparison_dir, run_comparison
from ctplatform.eval.job import run_evaluation
from ctplatform.eval.report import scan_key_salt
from ctplatform.phantom.cohort import cohort_confounder
from ctplatform.ingest.command import summary as ingest_summary
from ctplatform.ingest.job import exit_status, run_ingest
from ctplatform.partition.command import summary as partition_summary
from ctplatform.partition.job import run_partition
from ctplatform.partition.sarle.job import run_labelling
from ctplatform.phantom.cohort import generate_cohort
from ctplatform.phantom.layout import CohortLayout
from ctplatform.runtime import init_ray, setup_mlflow
from ctplatform.store import Store
from ctplatform.train.trainer import TrainingDivergedError, read_run_record, run_training, storage_root

log = logging.getLogger("ctplatform.demo.command")


class DemoStageError(RuntimeError):
    """A stage failed; the message says what and what to do. Finished stages stay reusable."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage {stage!r} failed: {message}")
        self.stage = stage


@dataclass
class DemoResult:
    key: str
    root: Path
    runs: dict[str, str]  # model column title -> training run id
    evaluations: dict[str, dict[str, str]]  # model -> split -> evaluation run id
    metrics: dict[str, dict[str, dict[str, float]]]  # model -> split -> metric -> value
    comparisons: dict[str, Path] = field(default_factory=dict)  # split -> folder of compare.md
    timings: list[tuple[str, float, str]] = field(default_factory=list)  # (stage, seconds, outcome)
    reused: dict[str, bool] = field(default_factory=dict)  # stage -> reused (no new work)


# ------------------------------------------------------------------------------ keys and settings
def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def cohort_params(cfg: Config) -> dict[str, Any]:
    d = cfg.demo
    return {"n": d.n, "size": d.size, "seed": d.seed, "confounder": d.confounder, "prevalence": dict(d.prevalence)}


def demo_key(cfg: Config) -> str:
    """Folder name of one demo setting: readable parts plus a hash of the cohort parameters."""
    d = cfg.demo
    return f"{d.size}-n{d.n}-seed{d.seed}-{_digest(cohort_params(cfg))[:6]}"


def demo_config(cfg: Config) -> Config:
    """The configuration with the demo's own store, Ray Train storage and evaluation folder."""
    c = cfg.model_copy(deep=True)
    root = (cfg.workdir / "demo" / demo_key(cfg)).resolve()
    c.store = str(root / "store")
    c.train.storage_path = str(root / "ray_results")
    c.eval.output_dir = str(root / "eval")
    return c


def training_hash(cfg: Config) -> str:
    """Hash of everything that shapes a trained model (storage paths excluded)."""
    train = cfg.train.model_dump(mode="json")
    train.pop("storage_path", None)
    return _digest(
        {
            "cohort": cohort_params(cfg),
            "ingest": cfg.ingest.model_dump(mode="json"),
            "partition": cfg.partition.model_dump(mode="json"),
            "model": cfg.model.model_dump(mode="json"),
            "train": train,
        }
    )


def eval_hash(cfg: Config) -> str:
    e = cfg.eval.model_dump(mode="json")
    for path_key in ("output_dir", "truth_dir"):
        e.pop(path_key, None)
    return _digest(e)


def with_lambda(cfg: Config, lam: float) -> Config:
    c = cfg.model_copy(deep=True)
    c.train.lambda_mask = lam
    return c


def model_title(lam: float) -> str:
    return "class only (lambda 0)" if lam == 0 else f"mask loss (lambda {lam:.3g})"


# ------------------------------------------------------------------------------ MLflow look-ups
def _find(cfg: Config, tags: dict[str, str]) -> str | None:
    """Id of the newest finished run of the experiment carrying `tags`, or None."""
    return tracking.find_run(setup_mlflow(cfg), tags)


def find_training_run(cfg: Config, config_hash: str) -> str | None:
    return _find(cfg, {tracking.DEMO_CONFIG_HASH: config_hash})


def find_evaluation(cfg: Config, run_id: str, split: str, ehash: str) -> str | None:
    return _find(cfg, {tracking.EVALUATED_RUN: run_id, tracking.SPLIT: split, tracking.DEMO_EVAL_HASH: ehash})


def find_comparison(cfg: Config, eval_a: str, eval_b: str) -> str | None:
    return _find(cfg, {tracking.STAGE: "compare", tracking.EVAL_A: eval_a, tracking.EVAL_B: eval_b})


def evaluation_metrics(run_id: str, split: str) -> dict[str, float]:
    """An evaluation run's metrics without the split prefix (per-label ones keep `auroc/<label>`)."""
    from mlflow import MlflowClient

    prefix = f"{split}_"
    return {k[len(prefix):]: v for k, v in MlflowClient().get_run(run_id).data.metrics.items() if k.startswith(prefix)}


def forget_demo_runs(cfg: Config, key: str) -> int:
    """Soft-delete every MLflow run the demo `key` created (for --fresh); returns how many."""
    from mlflow import MlflowClient

    exp = setup_mlflow(cfg)
    client = MlflowClient()
    runs = client.search_runs([exp], filter_string=f"tags.`{tracking.DEMO}` = '{key}'", max_results=10_000)
    for r in runs:
        client.delete_run(r.info.run_id)
    return len(runs)


# ------------------------------------------------------------------------------ the stages
class Stages:
    """Runs named stages with a banner, the elapsed time, and a clear error when one fails."""

    def __init__(self, total: int, echo: Callable[[str], None]) -> None:
        self.total, self.echo = total, echo
        self.done = 0
        self.start = time.monotonic()
        self.timings: list[tuple[str, float, str]] = []

    def run(self, name: str, title: str, fn: Callable[[], tuple[Any, str]]) -> Any:
        """fn() -> (result, outcome word such as 'done' or 'reused'); exceptions become DemoStageError."""
        self.done += 1
        self.echo(f"\n=== [{self.done}/{self.total}] {title} ===")
        t0 = time.monotonic()
        try:
            result, outcome = fn()
        except DemoStageError:
            raise
        except Exception as e:  # any stage failure ends the demo with the stage named
            raise DemoStageError(name, f"{type(e).__name__}: {e}") from e
        seconds = time.monotonic() - t0
        self.timings.append((name, seconds, outcome))
        self.echo(f"--- {name}: {outcome} in {seconds:.1f} s (demo elapsed {time.monotonic() - self.start:.0f} s)")
        return result


def stage_phantom(cfg: Config, cohort: Path, echo: Callable[[str], None]) -> tuple[Any, str]:
    truth = CohortLayout(cohort).truth_dir
    before = len(list(truth.glob("*.json"))) if truth.is_dir() else 0
    d = cfg.demo
    listing = generate_cohort(
        cohort, d.n, seed=d.seed, size=d.size, confounder=d.confounder, prevalence=dict(d.prevalence) or None
    )
    failed = int(listing.attrs.get("failed", 0))
    if failed:
        raise DemoStageError("phantom", f"{failed} scan(s) could not be generated (see {cohort}/failed.csv); re-run to retry them")
    counts = listing["split"].value_counts().to_dict()
    echo(f"cohort: {len(listing)} scans in {cohort} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    return listing, "reused" if before >= d.n else "done"


def stage_ingest(cfg: Config, cohort: Path, echo: Callable[[str], None]) -> tuple[Any, str]:
    df = run_ingest(CohortLayout(cohort).listing, cfg)
    echo(ingest_summary(df, cfg.store_path))
    if df.empty or exit_status(df, cfg.ingest.fail_fraction):
        raise DemoStageError("ingest", f"{int((df['status'] != 'ok').sum())} of {len(df)} scans failed (reasons above)")
    reused = bool(df["skipped"].astype(bool).all())
    return df, "reused" if reused else "done"


def stage_partition(cfg: Config, echo: Callable[[str], None]) -> tuple[Any, str]:
    df = run_partition(cfg)
    if df.empty:
        echo("partition: every volume was already partitioned")
    else:
        echo(partition_summary(df, cfg.store_path))
    table = Store(cfg.store_path).read_table("partition")
    if table is None or not (table["status"] == "ok").any():
        raise DemoStageError("partition", "no volume could be partitioned (errors above)")
    return df, "reused" if df.empty else "done"


def stage_labels(cfg: Config, cohort: Path, echo: Callable[[str], None]) -> tuple[Any, str]:
    summary = run_labelling(cfg, str(CohortLayout(cohort).reports), Store(cfg.store_path), skip_existing=True)
    echo(summary.table())
    if summary.failed:
        raise DemoStageError("label-reports", f"{summary.failed} report(s) could not be labelled: {summary.errors[:3]}")
    return summary, "reused" if not summary.labelled else "done"


def stage_train(cfg: Config, echo: Callable[[str], None]) -> tuple[str, str]:
    """Train one model, or reuse the finished run with the same configuration hash."""
    from mlflow import MlflowClient

    h = training_hash(cfg)
    found = find_training_run(cfg, h)
    if found:
        echo(f"reusing finished MLflow run {found} (configuration hash {h[:12]})")
        return found, "reused"
    lam = f"{cfg.train.lambda_mask:.3g}".replace(".", "p")
    name = f"demo-lambda{lam}-{h[:12]}"
    resume = read_run_record(storage_root(cfg), name) is not None
    if resume:
        echo(f"resuming the interrupted run {name} from its last checkpoint")
    try:
        outcome = run_training(cfg, resume=resume, run_name=name)
    except TrainingDivergedError as e:
        raise DemoStageError("train", str(e)) from None
    m = outcome.metrics
    echo(
        f"training {outcome.status}: best validation loss {m.get('best_val_loss', float('nan')):.4f} at epoch "
        f"{m.get('best_epoch')}, MLflow run {outcome.mlflow_run_id}"
    )
    client = MlflowClient()
    client.set_tag(outcome.mlflow_run_id, tracking.DEMO, demo_key(cfg))
    client.set_tag(outcome.mlflow_run_id, tracking.DEMO_CONFIG_HASH, h)  # last: marks the run reusable
    return outcome.mlflow_run_id, "done"


def stage_evaluate(cfg: Config, run_id: str, split: str, cohort: Path, echo: Callable[[str], None]) -> tuple[str, str]:
    """Evaluate run_id on split (or reuse a finished evaluation with the same settings); log the reliance."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    ehash = eval_hash(cfg)
    found = find_evaluation(cfg, run_id, split, ehash)
    client = MlflowClient()
    if found:
        echo(f"reusing evaluation run {found}")
        eval_id, outcome = found, "reused"
    else:
        out = run_evaluation(cfg, run_id, split)
        for note in out.notes:
            echo(f"note: {note}")
        eval_id, outcome = out.eval_run_id, "done"
        client.set_tag(eval_id, tracking.DEMO, demo_key(cfg))
        client.set_tag(eval_id, tracking.DEMO_EVAL_HASH, ehash)
    metric = f"{split}_{RELIANCE_METRIC}"
    spec = cohort_confounder(cohort)
    if spec is not None and metric not in client.get_run(eval_id).data.metrics:
        path = mlflow.artifacts.download_artifacts(run_id=eval_id, artifact_path="predictions.parquet")
        value = reliance_from_predictions(
            pd.read_parquet(path), pd.read_csv(CohortLayout(cohort).listing, keep_default_na=False), spec[1], split,
            scan_key_salt(cfg.workdir),
        )
        if value == value:  # not NaN
            client.log_metric(eval_id, metric, value)
    return eval_id, outcome


def stage_compare(cfg: Config, run_a: str, run_b: str, eval_a: str, eval_b: str, split: str, echo: Callable[[str], None]) -> tuple[Path, str]:
    from mlflow import MlflowClient

    out_dir = comparison_dir(cfg, run_a, run_b, split)
    found = find_comparison(cfg, eval_a, eval_b)
    if found and (out_dir / "compare.md").is_file():
        echo(f"reusing comparison run {found}: {out_dir / 'compare.md'}")
        return out_dir, "reused"
    result, out_dir, compare_run = run_comparison(cfg, run_a, run_b, split)
    MlflowClient().set_tag(compare_run, tracking.DEMO, demo_key(cfg))
    echo(f"{result.n_scans} paired scans; per-label DeLong tests in {out_dir / 'compare.md'}")
    return out_dir, "done"


# ------------------------------------------------------------------------------ the whole demo
def run_demo(cfg: Config, *, fresh: bool = False, echo: Callable[[str], None] = print) -> DemoResult:
    """Run (or reuse) every stage for cfg (the demo config); raises DemoStageError naming a failed stage."""
    import ray

    key = demo_key(cfg)
    cfg = demo_config(cfg)
    root = Path(cfg.store_path).parent
    cohort = root / "cohort"
    if fresh:
        n = forget_demo_runs(cfg, key)
        if root.exists():
            shutil.rmtree(root)
        echo(f"--fresh: removed {root} and marked {n} MLflow run(s) of this demo deleted")
    root.mkdir(parents=True, exist_ok=True)
    lambdas = [0.0, cfg.train.lambda_mask] if cfg.train.lambda_mask != 0 else [0.0]
    splits = list(cfg.demo.eval_splits)
    n_stages = 4 + 2 * len(lambdas) + (len(splits) if len(lambdas) == 2 else 0)
    stages = Stages(n_stages, echo)
    started_ray = not ray.is_initialized()
    d = cfg.demo
    try:
        stages.run("phantom", f"phantom cohort: {d.n} {d.size}-size scans, confounder {d.confounder}",
                   lambda: stage_phantom(cfg, cohort, echo))
        init_ray(cfg)  # one Ray session for every stage that follows
        stages.run("ingest", f"ingest into {cfg.store_path} at {list(cfg.ingest.spacing_mm)} mm",
                   lambda: stage_ingest(cfg, cohort, echo))
        stages.run("partition", f"partition: organs, QC and grid masks {cfg.model.geometry.name}",
                   lambda: stage_partition(cfg, echo))
        stages.run("label-reports", "label the reports (SARLE)", lambda: stage_labels(cfg, cohort, echo))
        runs: dict[str, str] = {}
        for lam in lambdas:
            title = model_title(lam)
            c = with_lambda(cfg, lam)
            runs[title] = stages.run(
                f"train lambda={lam:.3g}",
                f"train AxialNet, {title}: {c.train.epochs} epochs, {c.train.optimizer} lr {c.train.lr:g}, "
                f"{c.train.num_workers} Ray Train worker(s)",
                lambda c=c: stage_train(c, echo),
            )
        evaluations: dict[str, dict[str, str]] = {}
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        for title, run_id in runs.items():
            evaluations[title], metrics[title] = {}, {}

            def evaluate_all(run_id: str = run_id, title: str = title) -> tuple[None, str]:
                outcomes = []
                for split in splits:
                    echo(f"- split {split}")
                    eval_id, o = stage_evaluate(cfg, run_id, split, cohort, echo)
                    evaluations[title][split] = eval_id
                    metrics[title][split] = evaluation_metrics(eval_id, split)
                    outcomes.append(o)
                return None, "reused" if all(o == "reused" for o in outcomes) else "done"

            stages.run(f"evaluate {title}", f"evaluate {title} on {', '.join(splits)}", evaluate_all)
        comparisons: dict[str, Path] = {}
        if len(runs) == 2:
            (ta, ra), (tb, rb) = runs.items()
            for split in splits:
                comparisons[split] = stages.run(
                    f"compare {split}", f"compare the two models on {split} (DeLong per label, FDR)",
                    lambda split=split: stage_compare(cfg, ra, rb, evaluations[ta][split], evaluations[tb][split], split, echo),
                )
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    return DemoResult(
        key, root, runs, evaluations, metrics, comparisons, stages.timings,
        {name: outcome == "reused" for name, _, outcome in stages.timings},
    )
