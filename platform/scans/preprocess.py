"""From a Scan to the stored array: checks, resampling to the configured spacing, HU clip, int16.

    hu16, attrs = to_store(read_scan(path), cfg.ingest)
    store.write_volume(volume_id, hu16, {**attrs, "source_sha256": sha}, chunk_slices=cfg.ingest.chunk_slices)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctplatform.config import IngestConfig
from ctplatform.geometry import STORE_ORIENTATION
from ctplatform.scans.resample import resample, resampled_affine, resampled_shape
from ctplatform.scans.scan import Scan, ScanError

#: Bytes per output voxel held while resampling: the int16 result (float32 slabs are a few MB).
OUTPUT_BYTES_PER_VOXEL = 2
#: Interpreter, libraries and the Zarr writer's chunk buffers (measured: about 0.3 GB).
TASK_OVERHEAD_BYTES = 300_000_000


def check_scan(scan: Scan, cfg: IngestConfig) -> None:
    """Raise ScanError when the scan is not a usable CT volume (reason in the message)."""
    hu = scan.hu
    if hu.ndim != 3 or min(hu.shape) < 2:
        raise ScanError(f"not a 3D volume: shape {hu.shape} (a 2D image?)")
    spacing = np.asarray(scan.spacing_mm, dtype=np.float64)
    lo, hi = cfg.spacing_limits_mm
    if not np.all(np.isfinite(spacing)) or np.any(spacing < lo) or np.any(spacing > hi):
        raise ScanError(
            f"absurd voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm (z, y, x): expected "
            f"{lo}..{hi} mm; fix the header's voxel sizes (or ingest.spacing_limits_mm)"
        )
    bad = int(np.count_nonzero(~np.isfinite(hu)))
    if bad:
        raise ScanError(f"{bad} voxels are NaN or infinite; the file is corrupt or was written from invalid data")
    if cfg.min_air_fraction > 0:
        air = int(np.count_nonzero(hu < cfg.air_hu))
        if air < cfg.min_air_fraction * hu.size:
            raise ScanError(
                f"does not look like CT in Hounsfield units: only {air} of {hu.size} voxels are below "
                f"{cfg.air_hu:g} HU (air/lung); an MR or other image, or a CT stored without its rescale"
            )
    out_bytes = OUTPUT_BYTES_PER_VOXEL * int(np.prod(resampled_shape(hu.shape, scan.spacing_mm, cfg.spacing_mm)))
    need = out_bytes + hu.nbytes + TASK_OVERHEAD_BYTES
    if need > cfg.memory_per_task_gb * 1e9:
        raise ScanError(
            f"resampling would need about {need / 1e9:.1f} GB, over the task budget "
            f"ingest.memory_per_task_gb={cfg.memory_per_task_gb}; raise it or use a coarser spacing"
        )


def store_attrs(scan: Scan, cfg: IngestConfig, affine: np.ndarray) -> dict[str, Any]:
    """Geometry/provenance attributes of a stored volume (no header values besides geometry)."""
    return {
        "spacing_mm": [float(s) for s in cfg.spacing_mm],
        "orientation": STORE_ORIENTATION,
        "original_shape": [int(n) for n in scan.original_shape],
        "original_spacing_mm": [float(s) for s in scan.original_spacing_mm],
        "original_orientation": scan.original_orientation,
        "source_format": scan.source_format,
        "interpolation": cfg.interpolation,
        "hu_range": [int(v) for v in cfg.hu_range],
        "affine": np.asarray(affine, dtype=np.float64).round(6).tolist(),
    }


def to_store(scan: Scan, ingest_cfg: IngestConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Resample to `ingest_cfg.spacing_mm`, clip to `hu_range`, round to int16; returns (array, attrs)."""
    check_scan(scan, ingest_cfg)
    order = 1 if ingest_cfg.interpolation == "trilinear" else 0
    lo, hi = ingest_cfg.hu_range
    hu16 = resample(
        scan.hu, scan.spacing_mm, ingest_cfg.spacing_mm, order=order, dtype=np.int16, clip=(float(lo), float(hi))
    )
    affine = resampled_affine(scan.affine, scan.spacing_mm, ingest_cfg.spacing_mm)
    return hu16, store_attrs(scan, ingest_cfg, affine)
