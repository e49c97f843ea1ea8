"""PARTITION for ONE volume: organ map, quality control, grid masks and the partition.parquet row.

`partition_array` is pure (arrays in, arrays and a row out) and is what the tests exercise;
`partition_volume` adds the store: it reads the volume, writes `organs/<id>` and every grid variant,
and, when the volume came with lesion truth, that truth on the grid for every downsampling method
(`write_grid_truth`); each write is atomic and replaces the item, so a retried task is harmless; it
returns a small status row. It never raises: a bad volume gives a row with status `failed` and an error that says
what was wrong, and the job goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctplatform.config import GRID_METHODS, Config, PartitionConfig
from ctplatform.geometry import STORE_ORIENTATION, ModelGeometry
from ctplatform.labels import ORGAN_CODES
from ctplatform.partition.grid import grid_masks, truth_on_grid
from ctplatform.partition.organs import segment_organs
from ctplatform.partition.qc import QCResult, quality_control
from ctplatform.store import IncompleteItemError, Store

log = logging.getLogger("ctplatform.partition")

#: Geometry attributes of a volume that its organ map inherits.
INHERITED_ATTRS = ("spacing_mm", "orientation", "affine", "original_shape")


@dataclass
class PartitionOutput:
    organs: np.ndarray  # uint8 [z, y, x]
    grids: dict[str, np.ndarray]  # variant -> bool [3, H, D1, D2]
    qc: QCResult
    row: dict[str, Any]


def partition_array(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    cfg: PartitionConfig,
    geometry: ModelGeometry,
) -> PartitionOutput:
    """Segment, check and summarise one volume (HU [z, y, x], stored orientation)."""
    if hu.ndim != 3:
        raise ValueError(f"expected a volume [z, y, x]; got shape {hu.shape}")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f"spacing must be three positive numbers in mm; got {spacing_mm}")
    spacing = tuple(float(s) for s in spacing_mm)
    seg = segment_organs(
        hu,
        spacing,  # type: ignore[arg-type]
        method=cfg.method,
        hu_threshold=cfg.hu_threshold,
        min_lung_voxels_at_0p8mm=cfg.min_lung_voxels_at_0p8mm,
        exterior_air_hu=cfg.exterior_air_hu,
        airway_hu=cfg.airway_hu,
        max_airway_ml=cfg.max_airway_ml,
        threads=cfg.threads,
        closing_mm=cfg.closing_mm,
    )
    notes = []
    if seg.airways == "leak":
        notes.append("airway_leak")
    if seg.split == "columns":
        notes.append("split_columns")
    qc = quality_control(seg.organs, hu, spacing, cfg.qc, notes=tuple(notes))  # type: ignore[arg-type]
    grids = grid_masks(seg.organs, geometry, cfg.variants, fallback=qc.fallback)
    row: dict[str, Any] = {
        "method": cfg.method,
        "geometry": geometry.name,
        "shape": list(hu.shape),
        "spacing_mm": list(spacing),
        "split": seg.split,
        "airways": seg.airways,
        "airway_ml": round(seg.airway_ml, 1),
        **qc.row(spacing),  # type: ignore[arg-type]
    }
    return PartitionOutput(seg.organs, grids, qc, row)


def empty_row(volume_id: str, cfg: Config) -> dict[str, Any]:
    """A row with every column, for volumes that failed before a result existed."""
    return {
        "volume_id": volume_id,
        "status": "failed",
        "error": "",
        "method": cfg.partition.method,
        "geometry": cfg.model.geometry.name,
        "shape": [],
        "spacing_mm": [],
        "split": "",
        "airways": "",
        "airway_ml": float("nan"),
        "right_lung_ml": float("nan"),
        "left_lung_ml": float("nan"),
        "total_lung_ml": float("nan"),
        "right_lung_bbox": [],
        "left_lung_bbox": [],
        "right_lung_extent_mm": [],
        "left_lung_extent_mm": [],
        "qc_flags": "",
        "fallback": False,
        "seconds": float("nan"),
    }


def read_spacing(attrs: dict[str, Any], volume_id: str) -> tuple[float, float, float]:
    spacing = attrs.get("spacing_mm")
    if spacing is None or len(spacing) != 3:
        raise ValueError(f"volume {volume_id} has no spacing_mm attribute [z, y, x]; re-ingest it")
    orientation = attrs.get("orientation", STORE_ORIENTATION)
    if orientation != STORE_ORIENTATION:
        raise ValueError(
            f"volume {volume_id} is stored as {orientation}, not {STORE_ORIENTATION}; re-ingest it with this version"
        )
    return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def write_outputs(store: Store, volume_id: str, out: PartitionOutput, volume_attrs: dict[str, Any], cfg: Config) -> None:
    """Organ map then every grid variant; each write replaces any earlier item atomically."""
    geometry = cfg.model.geometry
    flags = [f for f in out.row["qc_flags"].split(";") if f]
    common = {"method": cfg.partition.method, "qc_flags": flags, "fallback": bool(out.qc.fallback)}
    organ_attrs = {k: volume_attrs[k] for k in INHERITED_ATTRS if k in volume_attrs}
    organ_attrs["organs"] = {name: code for name, code in ORGAN_CODES.items()}
    store.write_organs(volume_id, out.organs, {**organ_attrs, **common})
    for variant, mask in out.grids.items():
        attrs = {
            **common,
            "geometry": geometry.name,
            "input_shape": list(geometry.input_shape),
            "variant": variant,
            "organs": list(ORGAN_CODES),
        }
        store.write_grid(geometry.name, variant, volume_id, mask, attrs)


def partition_volume(store: Store, volume_id: str, cfg: Config) -> dict[str, Any]:
    """Read, segment, check, write; returns the partition.parquet row (never raises)."""
    t0 = time.perf_counter()
    row = empty_row(volume_id, cfg)
    try:
        arr = store.volume(volume_id)
        attrs = dict(arr.attrs)
        spacing = read_spacing(attrs, volume_id)
        hu = arr[...]
        out = partition_array(hu, spacing, cfg.partition, cfg.model.geometry)
        del hu
        write_outputs(store, volume_id, out, attrs, cfg)
        write_grid_truth(store, volume_id, cfg.model.geometry)
        row.update(out.row, status="ok")
    except (IncompleteItemError, ValueError, MemoryError, OSError) as e:
        row["error"] = f"{type(e).__name__}: {e}"
        log.warning("partition %s failed: %s", volume_id, row["error"])
    except Exception as e:  # noqa: BLE001 - one bad volume must not stop the job
        row["error"] = f"{type(e).__name__}: {e} (unexpected; please report with the volume's shape and spacing)"
        log.exception("partition %s failed unexpectedly", volume_id)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def write_grid_truth(store: Store, volume_id: str, geometry: ModelGeometry) -> bool:
    """The volume's lesion truth on the grid, for every method (a volume without truth: nothing)."""
    if not store.has_truth(volume_id):
        return False
    arr = store.truth(volume_id)
    attrs = {k: arr.attrs[k] for k in ("truth_labels", "confounder", "source_sha256") if k in arr.attrs}
    for method, cells in truth_on_grid(arr[...], geometry).items():
        store.write_grid_truth(geometry.name, method, volume_id, cells,
                               {**attrs, "geometry": geometry.name, "input_shape": list(geometry.input_shape),
                                "variant": method})
    return True


def grid_truth_current(store: Store, volume_id: str, geometry: ModelGeometry) -> bool:
    """No truth, or truth on the grid for every method made from the stored truth (same source_sha256)."""
    if not store.has_truth(volume_id):
        return True
    sha = store.truth(volume_id).attrs.get("source_sha256")
    return all(
        store.has_grid_truth(geometry.name, m, volume_id)
        and store.grid_truth(geometry.name, m, volume_id).attrs.get("source_sha256") == sha
        for m in GRID_METHODS
    )


def is_complete(store: Store, volume_id: str, cfg: Config) -> bool:
    """Organ map, every configured grid variant and any truth on the grid are finished for this volume."""
    geometry = cfg.model.geometry.name
    return (
        store.has_organs(volume_id)
        and all(store.has_grid(geometry, v, volume_id) for v in cfg.partition.variants)
        and grid_truth_current(store, volume_id, cfg.model.geometry)
    )
