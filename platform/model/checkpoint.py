"""Loading a trained AxialNet: its logged config and its weights (a state_dict, never a pickle)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import torch
import yaml

from ctplatform.config import Config
from ctplatform.model.axialnet import AxialNet
from ctplatform.tracking import set_tracking_uri


class RunNotFoundError(FileNotFoundError):
    """No MLflow run with this id at the tracking URI."""


def check_run_exists(run_id: str) -> None:
    """Raise RunNotFoundError naming the id and the tracking URI when the run does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException as e:
        if getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RunNotFoundError(
                f"there is no MLflow run {run_id!r} at {mlflow.get_tracking_uri()}: check the id "
                "(`mlflow ui` lists the runs) and the tracking URI (--workdir / MLFLOW_TRACKING_URI)"
            ) from None
        raise


def load_from_run(run_id: str, tracking_uri: str | None = None) -> tuple[AxialNet, Config]:
    """Rebuild a trained AxialNet from an MLflow run: its logged `config.yaml` and best weights.

    The backbone is built without the pretrained file (the logged state_dict holds all weights), so
    the run can be loaded on a machine that does not have that file. The model is in eval mode.
    """
    if tracking_uri:
        set_tracking_uri(tracking_uri)
    check_run_exists(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=tmp)
            state_path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="checkpoint/model_state.pt", dst_path=tmp
            )
        except Exception as e:  # MLflow raises several types for a missing run or artifact
            raise FileNotFoundError(
                f"MLflow run {run_id} has no config.yaml or checkpoint/model_state.pt at "
                f"{mlflow.get_tracking_uri()} (did the training run finish?): {type(e).__name__}"
            ) from None
        cfg = Config.model_validate(yaml.safe_load(Path(cfg_path).read_text()))
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    model = AxialNet(cfg.model.geometry, pretrained_weights=None)
    model.load_state_dict(state)
    model.pretrained = cfg.model.pretrained_weights is not None
    model.eval()
    return model, cfg
