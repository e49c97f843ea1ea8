"""A trained AxialNet as an MLflow model that loads anywhere (training logs it, predict reads it).

What the logged model holds (no pickle anywhere):
    artifacts/model_state.pt   the weights as a state_dict (torch.load(weights_only=True))
    artifacts/config.yaml      the run's whole configuration (geometry, preprocessing, ...)
    artifacts/model_card.json  labels, per-label thresholds and their source, input geometry,
                               preprocessing, the training run
    code/ctplatform/           the package itself (code_paths), so a fresh virtual environment
                               needs only `pip install -r requirements.txt` (pinned)
    python_model.py            models-from-code entry (this module's `AxialNetModel`)
plus an explicit signature and an input example. In a new environment:

    model = mlflow.pyfunc.load_model("models:/ctplatform-axialnet@champion")
    probs = model.predict(pd.DataFrame({"path": ["scan.nii.gz"]}))     # one row per scan, 80 columns

`predict` runs the same code path as `ctplatform predict` (scans.readers -> scans.preprocess ->
crop -> normalise -> AxialNet), so both give the same probabilities.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml

from ctplatform.config import Config
from ctplatform.labels import label_names
from ctplatform.model.axialnet import AxialNet
from ctplatform.model.operating_points import SOURCE_FALLBACK
from ctplatform.tracking import set_tracking_uri

#: Name of the model inside a run (runs:/<id>/model) and version of the model card's layout.
MODEL_NAME = "model"
CARD_FORMAT = 1
ENTRY = Path(__file__).with_name("mlflow_entry.py")
ARTIFACTS = {"model_state": "model_state.pt", "config": "config.yaml", "model_card": "model_card.json"}
#: Distributions the inference path imports (pinned to this environment's versions when logging).
REQUIREMENTS = (
    "mlflow", "torch", "torchvision", "numpy", "pandas", "pyarrow", "nibabel", "pydicom", "pylibjpeg",
    "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pydantic", "pyyaml", "zarr", "numcodecs", "fsspec",
)


@dataclass
class ModelBundle:
    """Everything predict needs from a trained model."""

    model: AxialNet
    cfg: Config
    thresholds: np.ndarray  # float64 [80]
    threshold_sources: list[str]
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.card.get("labels") or label_names())


# ----------------------------------------------------------------------------- one scan
def preprocess_scan(scan: Any, cfg: Config) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(model-input crop int16 [Z, Y, X], stored-grid affine 4x4, stored shape) of a scan, as training saw it.

    The scan is resampled and clipped as ingest stores it (scans.preprocess.to_store with the run's
    ingest settings), then centre-cropped / padded like the training dataset (model.dataset.read_crop).
    """
    from ctplatform.model.dataset import read_crop
    from ctplatform.scans.preprocess import to_store
    from ctplatform.scans.resample import resampled_affine

    hu16, _ = to_store(scan, cfg.ingest)
    affine = resampled_affine(scan.affine, scan.spacing_mm, cfg.ingest.spacing_mm)
    return read_crop(hu16, cfg.model.geometry.input_shape), np.asarray(affine, dtype=np.float64), tuple(hu16.shape)


def model_input(crop: np.ndarray, cfg: Config) -> np.ndarray:
    """Slice groups float32 [H, 3, Y, X] from the int16 crop (train.hu_clip, train.center)."""
    from ctplatform.model.dataset import normalize_hu, to_slice_groups

    x = normalize_hu(np.asarray(crop), cfg.train.hu_clip, cfg.train.center)
    return to_slice_groups(x, cfg.model.slices_per_group)


@torch.no_grad()
def run_model(
    model: AxialNet, x: torch.Tensor, slice_chunk: int | None = None, amp: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits [B, 80], slice scores [B, 80, H], HiResCAM [B, 80, H, D1, D2]) as float32 numpy.

    The backbone sees `slice_chunk` slice groups at a time (eval mode: identical to all at once,
    bounded memory). bf16 autocast on CUDA when `amp`; the head and maps are computed in float32.
    """
    from ctplatform.model.cams import hirescam_from_features

    model.eval()
    step = slice_chunk or x.shape[1]
    autocast = torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda" and amp)
    with autocast:
        z = torch.cat([model.forward_features(x[:, i : i + step]) for i in range(0, x.shape[1], step)], dim=1)
    z = z.float()  # the head and maps outside autocast: float32
    logits, c = model.head(z)
    maps = hirescam_from_features(z, model.fc.weight.float())
    return logits.float().cpu().numpy(), c.float().cpu().numpy(), maps.float().cpu().numpy()


# ----------------------------------------------------------------------------- logging
def model_card(cfg: Config, thresholds: np.ndarray, sources: list[str], run_id: str | None = None) -> dict[str, Any]:
    """The model's facts in one JSON document (no data about any scan or patient)."""
    g = cfg.model.geometry
    return {
        "format": CARD_FORMAT,
        "architecture": "AxialNet",
        "labels": list(label_names()),
        "thresholds": [float(t) for t in thresholds],
        "threshold_sources": list(sources),
        "threshold_rule": "validation split at the best epoch, Youden's J; 'fallback' = predict.default_threshold",
        "input": {
            "input_shape": list(g.input_shape),
            "slices_per_group": g.slices_per_group,
            "custom_conv_padding": g.custom_conv_padding,
            "feature_grid": list(g.grid),
            "orientation": "IPL",
        },
        "preprocessing": {
            "spacing_mm": list(cfg.ingest.spacing_mm),
            "hu_range": list(cfg.ingest.hu_range),
            "interpolation": cfg.ingest.interpolation,
            "crop": "centre crop / pad with the block minimum to input_shape",
            "hu_clip": list(cfg.train.hu_clip),
            "center": cfg.train.center,
        },
        "training_run_id": run_id,
    }


def pinned_requirements() -> list[str]:
    """`name==version` of every distribution the inference path needs, as installed here."""
    out = []
    for dist in REQUIREMENTS:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        out.append(f"{dist}=={version.split('+')[0]}")  # '+cu130': the local build; pip finds the release
    return out


def copy_package(dst: Path) -> Path:
    """A copy of the importable `ctplatform` package (code and data files, no caches) at dst/ctplatform."""
    import ctplatform.config

    src = Path(ctplatform.config.__file__).resolve().parent
    out = dst / "ctplatform"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def signature_and_example() -> tuple[Any, Any]:
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", "path"), ColSpec("string", "format", required=False)])
    outputs = Schema([ColSpec("double", name) for name in label_names()])
    return ModelSignature(inputs=inputs, outputs=outputs), pd.DataFrame({"path": ["scan.nii.gz"]})


def log_axialnet_model(
    state_dict: dict[str, torch.Tensor],
    cfg: Config,
    thresholds: np.ndarray,
    sources: list[str],
    run_id: str,
    registered_name: str | None = None,
) -> Any:
    """Log the model into MLflow run `run_id` as `model` (and register it when `registered_name`).

    Returns MLflow's ModelInfo (`registered_model_version` is set when registered).
    """
    signature, example = signature_and_example()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, d / ARTIFACTS["model_state"])
        (d / ARTIFACTS["config"]).write_text(cfg.to_yaml())
        (d / ARTIFACTS["model_card"]).write_text(json.dumps(model_card(cfg, thresholds, sources, run_id), indent=1))
        code = copy_package(d / "code")
        # MLflow validates the input example by loading the model here, which prepends the model's
        # code folder (a temporary copy of this package) to sys.path for good: restore it after.
        saved_path = list(sys.path)
        try:
            with mlflow.start_run(run_id=run_id):
                return mlflow.pyfunc.log_model(
                    name=MODEL_NAME,
                    python_model=str(ENTRY),  # models from code: nothing is pickled
                    artifacts={k: str(d / v) for k, v in ARTIFACTS.items()},
                    code_paths=[str(code)],
                    pip_requirements=pinned_requirements(),
                    signature=signature,
                    input_example=example,
                    registered_model_name=registered_name,
                )
        finally:
            sys.path[:] = saved_path
            importlib.invalidate_caches()


# ----------------------------------------------------------------------------- loading
def load_bundle(artifacts: dict[str, str]) -> ModelBundle:
    """A ModelBundle from the local paths of the three artifacts (keys of ARTIFACTS)."""
    cfg = Config.model_validate(yaml.safe_load(Path(artifacts["config"]).read_text()))
    card = json.loads(Path(artifacts["model_card"]).read_text())
    state = torch.load(artifacts["model_state"], map_location="cpu", weights_only=True)
    model = AxialNet(cfg.model.geometry, pretrained_weights=None)
    model.load_state_dict(state)
    model.pretrained = cfg.model.pretrained_weights is not None
    model.eval()
    thresholds = np.asarray(card.get("thresholds") or [np.nan] * model.n_labels, dtype=np.float64)
    sources = list(card.get("threshold_sources") or [SOURCE_FALLBACK] * model.n_labels)
    return ModelBundle(model, cfg, thresholds, sources, card)


def load_bundle_from_dir(model_dir: str | Path) -> ModelBundle:
    """A ModelBundle from a local MLflow model folder (its MLmodel file names the artifacts).

    Read directly rather than through mlflow.pyfunc.load_model, which would put the model's own copy
    of the package first on sys.path in this process.
    """
    model_dir = Path(model_dir)
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(f"{model_dir} is not an MLflow model folder (no MLmodel file)")
    conf = yaml.safe_load(mlmodel.read_text())
    arts = (conf.get("flavors", {}).get("python_function", {}) or {}).get("artifacts") or {}
    missing = [k for k in ARTIFACTS if k not in arts]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} is not a ctplatform model (artifacts {missing} missing); log it with a ctplatform training run"
        )
    return load_bundle({k: str(model_dir / arts[k]["path"]) for k in ARTIFACTS})


def model_uri(ref: str) -> str:
    """An MLflow model URI from a run id, a models:/ or runs:/ URI, or a local model folder."""
    if "://" in ref or ref.startswith(("models:/", "runs:/")):
        return ref
    p = Path(ref)
    if p.exists():
        return str(p.resolve())
    if len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref):
        return f"runs:/{ref}/{MODEL_NAME}"
    raise FileNotFoundError(f"--model {ref!r} is neither a local model folder, an MLflow run id nor a models:/ URI")


def download_model(ref: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """The model as a local folder: `ref` itself when local, else downloaded into `dst`."""
    uri = model_uri(ref)
    if Path(uri).is_dir():
        return Path(uri)
    if tracking_uri:
        set_tracking_uri(tracking_uri)
    Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as e:  # MLflow raises several types for an unknown run, model or alias
        raise FileNotFoundError(
            f"model {uri} could not be fetched from {mlflow.get_tracking_uri()}: {type(e).__name__}: {str(e)[:300]}"
        ) from None


# ----------------------------------------------------------------------------- pyfunc
class AxialNetModel(mlflow.pyfunc.PythonModel):
    """mlflow.pyfunc model: a DataFrame of scan paths in, one row of 80 probabilities per scan out."""

    def load_context(self, context: Any) -> None:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.bundle = load_bundle(dict(context.artifacts))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        import pandas as pd

        from ctplatform.model.operating_points import sigmoid
        from ctplatform.scans.readers import read_scan

        b = self.bundle
        frame = pd.DataFrame(model_input)
        if "path" not in frame.columns:
            raise ValueError("model input needs a 'path' column (NIfTI file, DICOM series folder or .npz)")
        fmts = frame["format"] if "format" in frame.columns else [None] * len(frame)
        rows = []
        for path, fmt in zip(frame["path"], fmts):
            crop, _, _ = preprocess_scan(read_scan(path, fmt or None), b.cfg)
            x = torch.from_numpy(np.ascontiguousarray(model_input_array(crop, b.cfg)))[None]
            logits, _, _ = run_model(b.model, x, None)
            rows.append(sigmoid(logits[0]))
        return pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(-1, len(b.labels)), columns=b.labels)


model_input_array = model_input  # the pyfunc's `predict` has a parameter named model_input
