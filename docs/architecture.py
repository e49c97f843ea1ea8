"""Draw docs/architecture.svg (and .png): the data flow through the stages and where each runs, and
below it the house the code lives in (apps, stages, the floor) with the import rules.

    python docs/architecture.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent
CPU, GPU, STORE, TRACK, INPUT, K8S = "#dbeafe", "#fde2e2", "#e8f5e1", "#fff3cd", "#eeeeee", "#f7f7fb"


def box(ax, x, y, w, h, title, lines=(), color="white", edge="#333333", size=10, lw=1.2):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=color, edgecolor=edge, linewidth=lw))
    ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=size, fontweight="bold")
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 0.58 - 0.3 * i, line, ha="center", va="top", fontsize=size - 2)


def arrow(ax, a, b, text="", style="-|>", color="#333333", ls="-", offset=(0, 0.12), rad=0.0):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=14, color=color, linewidth=1.3,
                                 linestyle=ls, connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((a[0] + b[0]) / 2 + offset[0], (a[1] + b[1]) / 2 + offset[1], text, ha="center", va="bottom",
                fontsize=7.5, color=color)


def draw() -> plt.Figure:
    fig, (ax, layers) = plt.subplots(2, 1, figsize=(15, 15.0), gridspec_kw={"height_ratios": [9.2, 5.8]})
    fig.subplots_adjust(hspace=0.02)
    draw_flow(ax)
    draw_layers(layers)
    return fig


def draw_flow(ax: plt.Axes) -> None:
    ax.set_xlim(0, 15)
    ax.set_ylim(0, 9.2)
    ax.axis("off")
    ax.text(0.2, 9.0, "ctplatform: data flow and where it runs", fontsize=14, fontweight="bold", va="top")

    # Kubernetes frame (the cluster deployment; locally the same boxes are one machine's local Ray)
    ax.add_patch(FancyBboxPatch((2.55, 0.35), 12.25, 7.95, boxstyle="round,pad=0.02,rounding_size=0.2",
                                facecolor=K8S, edgecolor="#7a7aa8", linewidth=1.2, linestyle="--"))
    ax.text(2.75, 8.15, "Kubernetes namespace ctplatform (deploy/kuberay)  ·  locally: one machine, local Ray, "
            "sqlite MLflow", fontsize=8.5, color="#50507a", va="top")

    # Inputs and people
    box(ax, 0.2, 6.3, 2.1, 1.5, "CT scans", ["NIfTI, DICOM series,", "RAD-ChestCT .npz"], INPUT)
    box(ax, 0.2, 4.5, 2.1, 1.3, "Reports", ["free text (CSV)"], INPUT)
    box(ax, 0.2, 1.0, 2.1, 2.6, "You", ["ray job submit", "(Job API, token auth)", "kubectl apply -f", "rayjob-*.yaml",
                                       "MLflow UI via", "port-forward"], "white")

    # Ray head
    box(ax, 3.0, 6.55, 3.3, 1.35, "Ray head", ["GCS, dashboard :8265 (token)", "job drivers, autoscaler"], "#e5e5f5")

    # CPU stages
    box(ax, 3.0, 4.3, 2.0, 1.75, "ingest", ["read, reorient I-P-L,", "resample 0.8 mm,", "int16 HU -> Zarr"], CPU)
    box(ax, 5.3, 4.3, 2.0, 1.75, "partition", ["lungs, mediastinum,", "QC + fallback,", "grid masks"], CPU)
    box(ax, 7.6, 4.3, 2.0, 1.75, "label-reports", ["SARLE: 80 labels", "x location"], CPU)
    ax.text(6.3, 4.12, "CPU worker group (Ray Data tasks, autoscaled 0..20 pods of 16 CPU / 64 Gi)", ha="center",
            fontsize=8, color="#1d4e89", zorder=5, bbox=dict(facecolor=K8S, edgecolor="none", pad=1.5))

    # Store
    box(ax, 3.0, 0.95, 6.6, 2.55, "STORE  (PVC ReadWriteMany at /mnt/ctplatform, or s3://)",
        ["data.zarr/volumes/<id>   int16 [z, y, x]", "data.zarr/organs/<id>   uint8 organ map",
         "data.zarr/grid/<geometry>/<variant>/<id>   bool [3, H, D1, D2]",
         "manifest.parquet · labels.parquet · partition.parquet", "ray_results/ (Ray Train checkpoints)"], STORE)

    # GPU stages
    box(ax, 10.2, 5.6, 2.2, 1.7, "train", ["AxialNet + mask loss", "Ray Train DDP,", "1 GPU per worker"], GPU)
    box(ax, 12.6, 5.6, 2.0, 1.7, "tune", ["Ray Tune over", "train trials", "(lambda x variant)"], GPU)
    box(ax, 10.2, 3.4, 2.2, 1.6, "evaluate", ["AUROC, OrganIoU,", "HiResCAM heatmaps"], GPU)
    ax.text(12.4, 7.45, "GPU worker group (0..8 pods, nvidia.com/gpu: 1)", ha="center", fontsize=8, color="#8a1c1c")

    # MLflow
    box(ax, 10.2, 0.7, 4.4, 2.2, "MLflow tracking server", ["http://mlflow.ctplatform.svc:5000 (ClusterIP,",
                                                             "--allowed-hosts); PostgreSQL backend,",
                                                             "artifacts on a volume (or s3)"], TRACK)

    # data flow
    arrow(ax, (2.3, 7.0), (3.0, 5.6), "scans", offset=(-0.2, 0.05))
    # reports go around the ingest and partition boxes, in the gap below the head
    ax.plot([2.3, 2.72, 2.72, 8.6], [5.15, 5.15, 6.3, 6.3], color="#333333", linewidth=1.3)
    arrow(ax, (8.6, 6.3), (8.6, 6.05))
    ax.text(6.3, 6.33, "reports", fontsize=7.5, ha="center", va="bottom")
    arrow(ax, (4.0, 4.3), (4.0, 3.5))
    ax.text(3.92, 3.62, "volumes", fontsize=7.5, ha="right")
    arrow(ax, (6.3, 3.5), (6.3, 4.3), "", style="<|-|>")
    ax.text(6.42, 3.62, "volumes in, masks out", fontsize=7.5)
    arrow(ax, (8.6, 4.3), (8.6, 3.5))
    ax.text(8.72, 3.62, "labels", fontsize=7.5)
    arrow(ax, (9.6, 3.1), (10.2, 6.2))
    ax.text(9.72, 4.55, "volumes, masks, labels", fontsize=7.5, rotation=79, ha="center", va="center")
    arrow(ax, (12.4, 6.45), (12.6, 6.45))
    arrow(ax, (11.3, 5.6), (11.3, 5.0))
    ax.text(11.4, 5.2, "checkpoint", fontsize=7.5)
    arrow(ax, (11.0, 3.4), (11.5, 2.9), "", color="#9a6b00")
    arrow(ax, (12.0, 5.6), (12.4, 2.9), "", color="#9a6b00")
    ax.text(12.75, 4.3, "params, metrics,\nmodels, plots", fontsize=7.5, color="#9a6b00", va="center")
    arrow(ax, (13.6, 5.6), (13.6, 2.9), "", color="#9a6b00")
    # control
    arrow(ax, (1.25, 3.6), (3.0, 6.9), "", color="#50507a", ls="--")
    ax.text(2.1, 4.2, "submit", fontsize=7.5, color="#50507a", rotation=62)
    arrow(ax, (4.65, 6.55), (4.65, 6.05), "", color="#50507a", ls="--")
    arrow(ax, (6.3, 7.2), (10.2, 7.0), "drivers schedule tasks / train workers", color="#50507a", ls="--")
    arrow(ax, (2.3, 1.3), (10.2, 1.0), "", color="#9a6b00", ls="--", rad=0.08)
    ax.text(6.3, 0.45, "MLflow UI (kubectl port-forward svc/mlflow 5000)", fontsize=7.5, color="#9a6b00", ha="center")

    ax.text(0.2, 0.12, "Each stage: a pure function over one item (tested without Ray) + a thin Ray job; rows carry ids "
            "and paths, tasks write the store themselves (atomic per item, so a re-run resumes).", fontsize=8,
            color="#444444")


APP, STAGE, FLOOR = "#ede7f6", "#dbeafe", "#e8f5e1"


def draw_layers(ax: plt.Axes) -> None:
    """The package platform/ (import name ctplatform): who may import whom (tests/test_architecture.py)."""
    ax.set_xlim(0, 15)
    ax.set_ylim(-0.05, 5.8)
    ax.axis("off")
    ax.text(0.2, 5.7, "The code: platform/ (import ctplatform) in three layers; imports only run downward",
            fontsize=14, fontweight="bold", va="top")
    # apps: know the order of stages
    box(ax, 0.2, 4.0, 3.0, 1.2, "cli.py", ["`ctplatform <command>`:", "lists each stage's command"], APP)
    box(ax, 3.5, 4.0, 4.2, 1.2, "demo/", ["command, pipeline, table;", "stages.py: THE order of stages"], APP)
    box(ax, 8.0, 4.0, 3.4, 1.2, "deploy/ (outside the package)", ["jobs/pipeline.py (that order),", "KubeRay, images"], APP)
    ax.text(11.7, 4.6, "apps: may import\nany stage", fontsize=9, color="#5b3f8c", va="center")
    # stages: side by side, never importing each other
    stages = [
        ("phantom/", ["cohorts + truth", "layout.py"]),
        ("ingest/", ["readers, orient,", "resample"]),
        ("partition/", ["organs, QC, grid,", "sarle/ (reports)"]),
        ("train/", ["Ray Train loop,", "tune/ (Ray Tune)"]),
        ("eval/", ["scoring, plots,", "compare/"]),
        ("predict/", ["batch inference", "(coming)"]),
    ]
    for i, (name, lines) in enumerate(stages):
        box(ax, 0.2 + i * 1.95, 2.15, 1.75, 1.25, name, lines, STAGE, size=9)
    ax.text(11.95, 2.8, "stages: import the floor only,\nnever another stage\n(eval: not train, phantom,\n"
            "ingest; train: not eval)", fontsize=9, color="#1d4e89", va="center")
    # the floor
    floor = [
        ("config.py", ["typed settings"]),
        ("labels.py", ["80 labels, organ", "codes and bits"]),
        ("geometry.py", ["orientation,", "feature grid"]),
        ("store.py", ["Zarr + Parquet,", "table columns"]),
        ("runtime.py", ["Ray, MLflow,", "map_volumes"]),
        ("tracking.py", ["MLflow tag names,", "find_run"]),
    ]
    for i, (name, lines) in enumerate(floor):
        box(ax, 0.2 + i * 1.6, 0.1, 1.45, 1.45, name, lines, FLOOR, size=8.5)
    box(ax, 9.85, 0.1, 2.0, 1.45, "model/", ["AxialNet, CAMs, losses,", "allowed regions, metrics,", "dataset, checkpoint"],
        FLOOR, size=8.5)
    ax.text(11.95, 0.9, "the floor: imports\nno stage, no app", fontsize=9, color="#2e6b1f", va="center")
    for x in (1.7, 5.6, 9.7):
        arrow(ax, (x, 4.0), (x, 3.4))
    for x in (1.1, 4.0, 6.9, 9.9):
        arrow(ax, (x, 2.15), (x, 1.55))
    ax.plot([0.3, 11.6], [3.78, 3.78], color="#bbbbbb", lw=0.8, ls=":")
    ax.plot([0.3, 11.6], [1.85, 1.85], color="#bbbbbb", lw=0.8, ls=":")


if __name__ == "__main__":
    fig = draw()
    fig.savefig(OUT / "architecture.svg", bbox_inches="tight")
    fig.savefig(OUT / "architecture.png", dpi=110, bbox_inches="tight")
    print(f"wrote {OUT / 'architecture.svg'} and .png")
