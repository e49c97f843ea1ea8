"""MLflow for training: the driver creates the run, rank 0 alone logs into it (Train V2 has no logger callback).

Only configuration, counts and metrics are logged: no volume ids, report text or patient data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctplatform import tracking
from ctplatform.runtime import setup_mlflow
from ctplatform.train import rundir

if TYPE_CHECKING:
    import torch

    from ctplatform.config import Config

#: Artifact path of the best weights (a state_dict) inside a run; `model.checkpoint.load_from_run` reads it.
MODEL_STATE_ARTIFACT = "checkpoint/model_state.pt"


def run_params(cfg: "Config", n_train: int | None = None, n_valid: int | None = None) -> dict[str, Any]:
    """The parameters that distinguish one training run from another."""
    t, m = cfg.train, cfg.model
    params: dict[str, Any] = {
        "lambda_mask": t.lambda_mask,
        "mask_loss": t.mask_loss if t.lambda_mask else "none",
        "grid_variant": t.grid_variant,
        "geometry": m.geometry.name,
        "input_shape": "x".join(map(str, m.input_shape)),
        "custom_conv_padding": m.custom_conv_padding,
        "pretrained": m.pretrained_weights is not None,
        "optimizer": t.optimizer,
        "lr": t.lr,
        "momentum": t.momentum if t.optimizer == "sgd" else "none",
        "batch_size": t.batch_size,
        "epochs": t.epochs,
        "early_stopping_patience": t.early_stopping_patience,
        "augment": t.augment,
        "seed": t.seed,
        "num_workers": t.num_workers,
        "use_gpu": t.use_gpu,
        "hu_clip": f"{t.hu_clip[0]:g},{t.hu_clip[1]:g}",
        "center": t.center,
        "val_organ_iou_threshold": t.organ_iou_threshold,
    }
    if n_train is not None:
        params["n_train"] = n_train
    if n_valid is not None:
        params["n_valid"] = n_valid
    return params


def start_mlflow_run(
    cfg: "Config",
    run_name: str,
    storage: str,
    parent_run_id: str | None = None,
    n_train: int | None = None,
    n_valid: int | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Create a run (nested under `parent_run_id` when given, with the extra `tags`), log params
    and config.yaml, and write the run record beside the Train run's checkpoints in `storage`
    (rundir.RUN_RECORD: what `--resume` and a retried trial read back). Returns (run id,
    experiment id).

    The run stays RUNNING: rank 0 logs into it, and `finish_mlflow_run` closes it.
    """
    import mlflow
    from mlflow import MlflowClient

    experiment_id = setup_mlflow(cfg)
    client = MlflowClient()
    all_tags = {tracking.STAGE: "train", tracking.RAY_RUN_NAME: run_name, **(tags or {})}
    run_id = None
    if parent_run_id:
        all_tags[tracking.PARENT_RUN] = parent_run_id
        # A driver killed after creating this trial's run but before writing its run record left the
        # run behind: adopt it (a trial's name is unique within its sweep) instead of a second child.
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{tracking.PARENT_RUN}` = '{parent_run_id}' and tags.`{tracking.RAY_RUN_NAME}` = '{run_name}'",
            max_results=1,
        )
        run_id = found[0].info.run_id if found else None
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(run_params(cfg, n_train, n_valid))
        mlflow.log_text(cfg.to_yaml(), "config.yaml")
    client.update_run(run_id, status="RUNNING")  # start_run's exit marked it FINISHED
    rundir.write_json(
        storage,
        run_name,
        rundir.RUN_RECORD,
        {"run_name": run_name, "mlflow_run_id": run_id, "experiment_id": experiment_id, "created": time.time()},
    )
    return run_id, experiment_id


def finish_mlflow_run(run_id: str, status: str, reason: str | None = None) -> None:
    """Mark the run FINISHED / FAILED / KILLED (with a short non-PHI reason tag)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if reason:
        client.set_tag(run_id, tracking.STOP_REASON, reason[:500])
    client.set_terminated(run_id, status=status)


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this tracking store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1"


class RankZeroTracker:
    """Rank 0's view of the run: per-epoch metrics, the best weights and the model at the end."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow import MlflowClient

        tracking.set_tracking_uri(tracking_uri)
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.client.update_run(run_id, status="RUNNING")  # also after a resume

    def log_epoch(self, metrics: dict[str, Any], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, epoch)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_best(
        self,
        model: "torch.nn.Module",
        best_state: dict[str, "torch.Tensor"],
        tags: dict[str, str],
        cfg: "Config | None" = None,
        thresholds: list[float] | None = None,
        threshold_sources: list[str] | None = None,
    ) -> None:
        """Log the best weights as checkpoint/model_state.pt and the model as an MLflow pyfunc model that
        loads in a fresh environment (model/packaged.py: state_dict, config, thresholds, the package),
        registered under cfg.mlflow.registered_model when set."""
        import tempfile

        import mlflow
        import numpy as np
        import torch

        from ctplatform.model.operating_points import SOURCE_FALLBACK
        from ctplatform.model.packaged import log_axialnet_model

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model_state.pt"
            torch.save(best_state, path)
            self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(MODEL_STATE_ARTIFACT).parent))
        if cfg is not None:
            n = model.fc.out_features if hasattr(model, "fc") else 80
            th = np.asarray(thresholds if thresholds is not None else [cfg.predict.default_threshold] * n, dtype=np.float64)
            sources = list(threshold_sources or [SOURCE_FALLBACK] * n)
            info = log_axialnet_model(best_state, cfg, th, sources, self.run_id, cfg.mlflow.registered_model)
            version = getattr(info, "registered_model_version", None)
            if version is not None:
                self.client.set_tag(self.run_id, "ctplatform.registered_model", f"{cfg.mlflow.registered_model}/{version}")
        with mlflow.start_run(run_id=self.run_id):
            mlflow.set_tags(tags)
        self.client.update_run(self.run_id, status="RUNNING")  # the driver sets the final status
