"""`ctplatform compare` behind the command: fetch two evaluations from MLflow, compare, write, log."""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import pandas as pd

from ctplatform import tracking
from ctplatform.config import Config
from ctplatform.eval.compare.comparison import BASELINE_NOTE, Comparison, compare_runs
from ctplatform.eval.report import html_table, markdown_table
from ctplatform.eval.tracking import find_evaluation_run
from ctplatform.runtime import setup_mlflow


def _fetch(run_id: str, path: str, dst: str) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst))
    except Exception as e:  # MLflow raises several types for a missing artifact
        raise FileNotFoundError(f"evaluation run {run_id} has no artifact {path} ({type(e).__name__})") from None


def _evaluation(cfg: Config, run_id: str, split: str, tmp: str) -> tuple[str, pd.DataFrame, pd.DataFrame, dict]:
    from mlflow import MlflowClient

    eval_id = find_evaluation_run(cfg, run_id, split)
    d = Path(tmp) / eval_id
    pred = pd.read_parquet(_fetch(eval_id, "predictions.parquet", str(d)))
    per_label = pd.read_csv(_fetch(eval_id, "per_label.csv", str(d)))
    prefix = f"{split}_"
    metrics = {
        k[len(prefix):]: v
        for k, v in MlflowClient().get_run(eval_id).data.metrics.items()
        if k.startswith(prefix) and "/" not in k  # per-label metrics are in per_label.csv
    }
    return eval_id, pred, per_label, metrics


def write_comparison(result: Comparison, out_dir: Path, title: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = f"# {title}\n\n{result.n_scans} paired scans.\n\n## Headline\n\n{BASELINE_NOTE}\n\n" \
         f"{markdown_table(result.headline)}\n\n" \
         f"## Per label (DeLong test, Benjamini-Hochberg q)\n\n{markdown_table(result.per_label)}\n"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #bbb;padding:3px 7px}"
        f"th{{background:#eee}}</style><title>{title}</title></head><body><h1>{title}</h1>"
        f"<p>{result.n_scans} paired scans.</p><h2>Headline</h2><p>{html.escape(BASELINE_NOTE)}</p>"
        f"{html_table(result.headline)}"
        f"<h2>Per label (DeLong test, Benjamini-Hochberg q)</h2>{html_table(result.per_label)}</body></html>"
    )
    paths = [out_dir / "compare.md", out_dir / "compare.html", out_dir / "compare.csv"]
    paths[0].write_text(md)
    paths[1].write_text(page)
    result.per_label.to_csv(paths[2], index=False)
    return paths


def comparison_dir(cfg: Config, run_a: str, run_b: str, split: str) -> Path:
    """Where the comparison of run A and run B on `split` writes compare.md and its tables."""
    return Path(cfg.eval.output_dir or (cfg.workdir / "eval")) / "compare" / f"{run_a}_vs_{run_b}" / split


def run_comparison(cfg: Config, run_a: str, run_b: str, split: str) -> tuple[Comparison, Path, str]:
    """Compare the evaluations of run A and run B on `split`; returns (result, folder, MLflow run id)."""
    from mlflow import MlflowClient

    setup_mlflow(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ea, pa, la, ma = _evaluation(cfg, run_a, split, tmp)
        eb, pb, lb, mb = _evaluation(cfg, run_b, split, tmp)
    result = compare_runs(pa, pb, la, lb, ma, mb, split)
    out_dir = comparison_dir(cfg, run_a, run_b, split)
    client = MlflowClient()
    name_a, name_b = (client.get_run(r).info.run_name or r for r in (run_a, run_b))  # the models, not only ids
    paths = write_comparison(result, out_dir, f"{name_a} (A, run {run_a}) vs {name_b} (B, run {run_b}) on {split}")
    exp = client.get_run(ea).info.experiment_id
    run = client.create_run(
        exp,
        run_name=f"compare-{split}",
        tags={tracking.STAGE: "compare", tracking.RUN_A: run_a, tracking.RUN_B: run_b,
              tracking.SPLIT: split, tracking.EVAL_A: ea, tracking.EVAL_B: eb},
    )
    for p in paths:
        client.log_artifact(run.info.run_id, str(p))
    client.set_terminated(run.info.run_id)
    return result, out_dir, run.info.run_id
