"""One typed configuration for every stage: loaded from YAML, overridable from the command line.

    cfg = load_config("configs/demo.yaml", overrides=["train.lambda_mask=0", "ingest.spacing_mm=[2,2,2]"])

Each stage reads its own section; the model geometry (`model`) is shared by PARTITION (grid masks),
training and evaluation, so the feature grid is defined once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ctplatform.geometry import ModelGeometry

GRID_METHODS: tuple[str, ...] = ("nearest", "trilinear", "area")
GRID_VARIANTS: tuple[str, ...] = tuple(
    f"{m}{suffix}" for m in GRID_METHODS for suffix in ("", "-dilated")
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(Section):
    address: str | None = Field(
        None, description="Ray cluster address; None: RAY_ADDRESS if set, else a local Ray on this machine"
    )
    num_cpus: int | None = Field(None, description="CPUs of a local Ray (None: all)")


class MlflowConfig(Section):
    tracking_uri: str | None = Field(
        None, description="None: MLFLOW_TRACKING_URI if set, else sqlite:///<workdir>/mlflow.db"
    )
    experiment: str = "ctplatform"
    registered_model: str | None = Field(
        "ctplatform-axialnet", description="Model Registry name a training run registers its model under (None: not registered)"
    )


class IngestConfig(Section):
    spacing_mm: tuple[float, float, float] = Field(
        (0.8, 0.8, 0.8), description="Target voxel spacing [z, y, x] in mm"
    )
    hu_range: tuple[int, int] = Field((-1024, 3071), description="HU clip range before int16 storage")
    interpolation: Literal["trilinear", "nearest"] = "trilinear"
    chunk_slices: int = Field(24, description="Axial slices per chunk (multiple of 3: slice groups)")
    codec: Literal["zstd", "lz4", "lz4hc"] = Field(
        "zstd",
        description="Blosc codec of volumes: zstd (smallest, cheap to write), lz4 (~3x faster decode, ~13% more "
        "bytes) or lz4hc (fastest decode at ~zstd's size, ~4x zstd's encode CPU; GPU training)",
    )
    cpus_per_task: float = 1.0
    memory_per_task_gb: float = Field(4.0, description="Ray memory request per ingest task")
    fail_fraction: float = Field(
        1.0,
        description="Exit non-zero when more than this fraction of scans failed (1.0: only when all failed)",
    )
    spacing_limits_mm: tuple[float, float] = Field(
        (0.1, 20.0), description="Source voxel sizes outside this range are rejected as absurd"
    )
    air_hu: float = Field(-500.0, description="Non-CT check: HU below which a voxel counts as air/lung")
    min_air_fraction: float = Field(
        0.001, description="Non-CT check: minimum fraction of voxels below air_hu (0 disables the check)"
    )
    ctrate_metadata: str | None = Field(
        None, description="CT-RATE metadata CSV (None: metadata/<split>_metadata.csv found above each file)"
    )
    max_tasks_in_flight: int | None = Field(
        None, description="Ray tasks at once (None: as many as CPUs and memory_per_task_gb allow)"
    )
    max_compression_ratio: float = Field(
        64.0, description="A compressed input claiming to inflate more than this (x its file size) is refused as a bomb"
    )
    pseudonymise_key: str | None = Field(
        None,
        description="Key file (kept outside the store) for pseudonymising ids derived from folder/file names: "
        "ids become keyed hashes, and folder names never reach ids, Zarr paths or the manifest "
        "(env CTPLATFORM_PSEUDONYM_KEY_FILE also sets it)",
    )

    @field_validator("chunk_slices")
    @classmethod
    def _multiple_of_three(cls, v: int) -> int:
        if v % 3:
            raise ValueError("chunk_slices must be a multiple of 3 (whole slice groups)")
        return v


class PartitionQCConfig(Section):
    """Lung plausibility limits (partition/qc.py explains each flag)."""

    min_lung_ml: float = Field(100.0, description="a lung (or lung piece in a crop) below this is missing")
    min_lung_height_mm: float = Field(30.0, description="a lung shorter than this apex to base is missing")
    max_total_lung_ml: float = Field(10_000.0, description="more lung than any adult has: air outside the lungs was taken")
    min_lung_mean_hu: float = Field(-970.0, description="mean lung HU below this is gas (bowel, outside air), not parenchyma")
    min_lungs_width_mm: float = Field(100.0, description="both lungs together narrower than this left to right")
    min_complete_lungs_ml: float = Field(1_500.0, description="complete lungs below this get the informational flag")


class PartitionConfig(Section):
    method: Literal["reference", "improved"] = Field(
        "improved", description="reference: the published algorithm exactly; improved: see docs"
    )
    hu_threshold: float = -300.0
    min_lung_voxels_at_0p8mm: int = 1_000_000
    variants: list[str] = Field(default_factory=lambda: list(GRID_VARIANTS))
    cpus_per_task: float = 1.0
    memory_per_task_gb: float = 4.0
    exterior_air_hu: float = Field(
        -950.0, description="improved: a border-touching air component is outside air when its median HU is below this"
    )
    airway_hu: float = Field(-950.0, description="improved: airway lumen threshold for removing the trachea and bronchi")
    max_airway_ml: float = Field(250.0, description="improved: a grown airway tree larger than this is a leak into lung")
    closing_mm: float = Field(
        5.0, ge=0, description="improved: per-slice closing of each lung (square half-side, mm) taking back soft tissue; 0: off"
    )
    threads: int = Field(1, ge=1, description="threads labelling slabs inside one task (1 under Ray: one CPU per task)")
    max_concurrent_tasks: int | None = Field(None, description="Ray tasks at once (None: as many as CPUs allow)")
    qc: PartitionQCConfig = Field(default_factory=lambda: PartitionQCConfig())

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) - set(GRID_VARIANTS))
        if bad:
            raise ValueError(f"unknown grid variants {bad}; choose from {list(GRID_VARIANTS)}")
        return v


class ModelConfig(Section):
    input_shape: tuple[int, int, int] = Field(
        (405, 420, 420), description="[Z, Y, X] after pad/centre-crop (paper: 405 x 420 x 420)"
    )
    slices_per_group: int = 3
    custom_conv_padding: Literal[0, 1] = Field(
        0, description="0: the paper's valid 3x3 custom convs; 1: size-preserving (small geometries)"
    )
    pretrained_weights: Path | None = Field(
        None, description="Local ResNet-18 ImageNet state_dict; None: random initialisation"
    )
    backbone_layers: Literal[2, 3, 4] = Field(
        4, description="ResNet-18 cut after layer2 / layer3 (stride 8 / 16: a finer grid on small inputs) or whole (4, the paper)"
    )

    @property
    def geometry(self) -> ModelGeometry:
        return ModelGeometry(
            input_shape=tuple(self.input_shape),
            slices_per_group=self.slices_per_group,
            custom_conv_padding=self.custom_conv_padding,
            backbone_layers=self.backbone_layers,
        )

    @model_validator(mode="after")
    def _valid_geometry(self) -> "ModelConfig":
        self.geometry  # raises with a clear message when the crop cannot produce a grid
        return self


class TrainConfig(Section):
    lambda_mask: float = Field(1 / 3, description="Mask-loss weight; 0 is the class-only baseline")
    mask_loss: Literal["published", "paper_eq11", "positive_pairs", "mean_softplus", "sum_neglog"] = Field(
        "published",
        description="published: the published code (mean softplus of sum_f w Z over all forbidden cells); "
        "paper_eq11: the paper's per-scan sum of -log(1-a); positive_pairs: mean over positive (scan, label) "
        "pairs of the sum of ReLU(HiResCAM) over their forbidden cells (model/losses.py; "
        "mean_softplus and sum_neglog are the old names of the first two)",
    )
    labels: Literal["all", "present"] = Field(
        "all", description="labels trained and scored: all 80, or those with positives in the training split"
    )
    selection_metric: Literal["val_class_loss", "val_loss"] = Field(
        "val_class_loss",
        description="validation loss that picks the best epoch: val_class_loss is the same criterion for every "
        "lambda; val_loss adds lambda * L_mask (the old choice: not comparable between a class-only and a mask-loss model)",
    )
    grid_variant: str = "nearest"
    hu_clip: tuple[float, float] = (-1000.0, 800.0)
    center: float = Field(0.449, description="subtracted after scaling to [0, 1] (published code)")
    augment: bool = True
    optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="sgd: the paper's SGD with momentum; adam: Adam (no momentum setting), e.g. the CPU demo from random init"
    )
    lr: float = 1e-3
    momentum: float = Field(0.99, description="SGD momentum (the paper: 0.99); unused by adam")
    epochs: int = 10
    batch_size: int = 1
    early_stopping_patience: int = 3
    seed: int = 0
    num_workers: int = Field(1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = 1.0
    loader_workers: int = Field(1, description="torch DataLoader worker processes per rank")
    storage_path: str | None = Field(None, description="Ray Train storage (local, NFS or s3://); None: <workdir>/ray_results")
    max_failures: int = Field(1, description="worker-failure recoveries (FailureConfig)")
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "valid": "valid", "test": "test"},
        description="manifest split names used for training, validation and test",
    )
    amp: bool = Field(True, description="bf16 autocast on GPU (CPU always runs float32)")
    steps_per_epoch: int | None = Field(None, description="cap on optimizer steps per epoch (None: the whole split)")
    checkpoints_to_keep: int = Field(2, ge=1, description="Ray Train checkpoints kept in storage (the latest ones)")
    explode_factor: float = Field(
        1000.0, gt=1, description="stop when a step's loss exceeds this times the run's first loss (or 1)"
    )
    organ_iou_threshold: float = Field(
        0.5, gt=0, lt=1, description="fixed threshold of the validation OrganIoU (normalised attention > t)"
    )
    # GPU input and step settings (issue 18; docs/train.md, "Feeding a GPU")
    preprocess: Literal["loader", "device"] = Field(
        "device",
        description="device: loader processes ship int16 crops, flip/rot90/clip/normalise run on the training device "
        "(same tensors, ~1/5 of the loader CPU); loader: all of it in the loader processes",
    )
    channels_last: bool = Field(True, description="channels_last memory format for the 2D backbone on GPU (CPU: off)")
    compile: bool = Field(False, description="torch.compile the model (first steps compile; GPU runs gain)")
    accumulate_steps: int = Field(
        1, ge=1, description="micro-batches of train.batch_size per optimizer step (gradient accumulation)"
    )
    qc_exclude_flags: tuple[str, ...] = Field(
        ("no_lungs",),
        description="partition QC flags that exclude a volume from training and validation (counts logged "
        "to MLflow); other fallback volumes train on the heuristic masks and are counted",
    )

    @field_validator("mask_loss")
    @classmethod
    def _mask_loss_name(cls, v: str) -> str:
        # old names read as the forms they always computed (model/losses.py FORM_ALIASES)
        return {"mean_softplus": "published", "sum_neglog": "paper_eq11"}.get(v, v)

    @field_validator("grid_variant")
    @classmethod
    def _known_variant(cls, v: str) -> str:
        if v not in GRID_VARIANTS:
            raise ValueError(f"unknown grid variant {v!r}; choose from {list(GRID_VARIANTS)}")
        return v


#: Per-epoch validation metrics a sweep can select on (reported by train/loop.py) and their better direction.
TUNE_METRICS: dict[str, str] = {
    "val_class_loss": "min",
    "val_loss": "min",
    "val_mask_loss": "min",
    "val_auroc_median": "max",
    "val_organ_iou": "max",
}


class TuneConfig(Section):
    """A Ray Tune sweep (`ctplatform tune`): each trial is one Ray Train run of the train section with
    its lambda, grid variant, lr and seed replaced by the trial's values."""

    lambdas: list[float] = Field(default_factory=lambda: [0.0, 1 / 3], description="mask-loss weights (0: class-only baseline)")
    variants: list[str] = Field(default_factory=lambda: list(GRID_VARIANTS), description="grid-mask variants")
    lrs: list[float] | None = Field(None, description="learning rates (None: train.lr)")
    lr_range: tuple[float, float] | None = Field(
        None, description="random search only: draw lr log-uniformly from [low, high] instead of lrs"
    )
    seeds: list[int] | None = Field(None, description="seeds (None: train.seed)")
    search: Literal["grid", "random"] = "grid"
    num_samples: int = Field(1, ge=1, description="grid: repeats of the whole grid; random: trials drawn")
    # val_loss = class + lambda * mask differs in scale between lambdas, so it cannot rank them.
    metric: str = Field("val_class_loss", description="validation metric for ASHA and the best trial")
    mode: Literal["min", "max"] | None = Field(None, description="None: the metric's better direction (losses min, AUROC/OrganIoU max)")
    asha: bool = True
    asha_grace_period: int = Field(2, ge=1, description="epochs every trial runs before ASHA may stop it")
    asha_reduction_factor: float = Field(3.0, gt=1, description="ASHA keeps the best 1/factor at each rung")
    max_concurrent_trials: int | None = Field(
        None, description="None: as many as the cluster's GPUs (or CPUs) fit at once"
    )
    # The trial's driver function only launches and watches its Ray Train run; the Train workers
    # request train.num_workers x train.cpus_per_worker (and a GPU each) themselves.
    trial_cpus: float = Field(0.0, ge=0, description="CPUs of a trial's driver function")
    trial_gpus: float = Field(0.0, ge=0, description="GPUs of a trial's driver function (its workers get their own)")
    trial_memory_gb: float = Field(0.5, ge=0, description="memory reserved for a trial's driver function")
    max_trial_retries: int = Field(1, ge=0, description="retries of a failed trial before it is recorded as failed")
    storage_path: str | None = Field(
        None, description="Tune experiments (local, NFS or s3://); None: <workdir>/tune_results"
    )

    @field_validator("variants")
    @classmethod
    def _known_tune_variants(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) - set(GRID_VARIANTS))
        if bad or not v:
            raise ValueError(f"tune.variants: unknown or none {bad}; choose from {list(GRID_VARIANTS)}")
        return v

    @field_validator("lambdas")
    @classmethod
    def _lambdas(cls, v: list[float]) -> list[float]:
        if not v or any(x < 0 for x in v):
            raise ValueError("tune.lambdas must list at least one weight, each >= 0")
        return v

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in TUNE_METRICS:
            raise ValueError(f"tune.metric {v!r} is not reported per epoch; choose from {list(TUNE_METRICS)}")
        return v

    @model_validator(mode="after")
    def _resources(self) -> "TuneConfig":
        if self.mode is None:
            object.__setattr__(self, "mode", TUNE_METRICS[self.metric])  # no re-validation loop
        if self.trial_cpus == 0 and self.trial_gpus == 0 and self.trial_memory_gb == 0:
            raise ValueError("a trial's driver must request something: set tune.trial_memory_gb > 0 (or trial_cpus)")
        return self


class EvalConfig(Section):
    split: str = "test"
    valid_split: str | None = Field(
        None, description="split whose scans choose the OrganIoU thresholds; None: the run's train.splits['valid']"
    )
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for AUROC CIs (0: none)")
    seed: int = 0
    figure_scans: int = Field(4, ge=0, description="scans drawn as HiResCAM vs Grad-CAM panels (with NIfTI heatmaps)")
    figure_labels_per_scan: int = Field(3, ge=1)
    curve_labels: list[str] | None = Field(
        None, description="labels of the per-slice score plot; None: the 9 with the most balanced presence"
    )
    organ_iou_convention: Literal["ours", "published"] = Field(
        "ours", description="ours: a map wholly inside the allowed region scores 1; published: 0"
    )
    sanity_scans: int = Field(8, ge=0, description="scans whose HiResCAM is compared with a randomised model's")
    nifti: bool = Field(True, description="export figure heatmaps as NIfTI aligned with the source scan")
    scans_per_task: int = Field(8, ge=1, description="volumes per Ray task")
    forward_batch: int = Field(1, ge=1, description="volumes per forward pass inside a task")
    slice_chunk: int | None = Field(
        32, ge=1, description="slice groups through the backbone at once (bounds memory; None: all)"
    )
    cpus_per_task: float = 1.0
    gpus_per_task: float = Field(0.0, ge=0, description="GPUs per scoring task (the model runs on cuda when given one)")
    memory_per_task_gb: float = 4.0
    output_dir: str | None = Field(None, description="local folder for the files; None: <workdir>/eval")
    truth_dir: str | None = Field(
        None, description="ignored: lesion truth is read from the store (docs/evaluate.md); kept so older configurations load"
    )
    truth_grid_method: Literal["nearest", "trilinear", "area"] = Field(
        "area", description="which of PARTITION's grid truths (store truth_grid/<geometry>/<method>) to score against (area: any lesion voxel in the cell)"
    )


class DemoConfig(Section):
    """`ctplatform demo`: the phantom cohort it generates and the splits it evaluates."""

    n: int = Field(200, ge=8, description="scans in the phantom cohort (train 50%, valid 15%, test 15%, shifted 20%)")
    size: Literal["tiny", "demo"] = Field("demo", description="phantom size: tiny (~3.7 mm, tests) or demo (~1.5 mm)")
    seed: int = Field(0, description="cohort seed: same seed, same patients")
    confounder: str = Field(
        "fat:great_vessel_atherosclerosis:0.9", description="KIND[:LABEL[:STRENGTH]] as `ctplatform phantom --confounder`"
    )
    prevalence: dict[str, float] = Field(
        default_factory=dict, description="finding -> prevalence overrides (as `ctplatform phantom --prevalence`)"
    )
    eval_splits: list[str] = Field(
        default_factory=lambda: ["test", "shifted"],
        description="splits evaluated; the first is the headline, 'shifted' breaks the confounder's link to its label",
    )


class PredictConfig(Section):
    """`ctplatform predict`: a trained model on new scans (Ray Data batch inference, docs/predict.md)."""

    replicas: int = Field(1, ge=1, description="model replicas (actors); each holds one copy of the model")
    gpus_per_replica: float | Literal["auto"] = Field(
        "auto", description="auto: one GPU per replica when the cluster has GPUs, else 0 (CPU replicas)"
    )
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs of a model replica")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs of a read/preprocess task and of a write task")
    memory_per_task_gb: float = Field(4.0, gt=0, description="Ray memory request of a read/preprocess task")
    amp: bool = Field(True, description="bf16 autocast on GPU replicas (CPU always runs float32)")
    slice_chunk: int | None = Field(
        32, ge=1, description="slice groups through the backbone at once (bounds memory; None: all)"
    )
    default_threshold: float = Field(
        0.5, gt=0, lt=1, description="probability threshold of a label the model has no validation operating point for"
    )
    min_maps: int = Field(0, ge=0, description="write maps for at least this many top-scoring labels per scan, above threshold or not")
    max_maps: int = Field(10, ge=0, description="at most this many maps per scan (highest probability first)")
    png: bool = Field(True, description="write the one-page PNG summary of each scan")
    fail_fraction: float = Field(1.0, description="exit non-zero when more than this fraction of scans failed")


class Config(Section):
    workdir: Path = Field(Path("ctplatform-work"), description="Default root for store, MLflow and runs")
    store: str | None = Field(None, description="Store path (local, NFS or s3://); None: <workdir>/store")
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)

    @property
    def store_path(self) -> str:
        return self.store if self.store is not None else str(self.workdir / "store")

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: config, then MLFLOW_TRACKING_URI, then a local SQLite file."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")  # the user's (tracking.set_tracking_uri never writes it)
        if env:
            return env
        return f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional) and apply `section.key=value` overrides (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        tree = yaml.safe_load(p.read_text()) or {}
        if not isinstance(tree, dict):
            raise ValueError(f"config file {p} must hold a mapping at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return Config.model_validate(tree)
