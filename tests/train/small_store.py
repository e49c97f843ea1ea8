"""A small store written directly through the Store API (until the phantom stage's fixture lands).

Volumes are int16 HU with a bright 'lesion' in one lung for positive scans, so the class signal
is real; grid masks put the right lung in the low-x half and the left lung in the high-x half
(stored orientation: x toward the patient's left).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctplatform.config import Config, load_config
from ctplatform.labels import all_labels, label_index
from ctplatform.store import Store

INPUT_SHAPE = (24, 64, 64)  # custom_conv_padding=1 -> grid 8x2x2
SMALL_OVERRIDES = [
    f"model.input_shape={list(INPUT_SHAPE)}",
    "model.custom_conv_padding=1",
    "train.grid_variant=nearest",
    "train.epochs=2",
    "train.num_workers=1",
    "train.loader_workers=0",
    "train.use_gpu=false",
    "train.lr=0.0001",
    "train.momentum=0.9",
]


def small_config(tmp: Path, store: Path, extra: list[str] | None = None) -> Config:
    return load_config(
        None,
        SMALL_OVERRIDES
        + [f"workdir={tmp / 'work'}", f"store={store}", f"train.storage_path={tmp / 'ray_results'}"]
        + list(extra or []),
    )


def grid_masks(grid: tuple[int, int, int]) -> np.ndarray:
    h, d1, d2 = grid
    m = np.zeros((3, h, d1, d2), dtype=bool)
    m[0, 1 : h - 1, :, : d2 // 2] = True  # right lung: patient's right = low x
    m[1, 1 : h - 1, :, d2 // 2 :] = True  # left lung
    m[2, 2 : h - 2, 0, :] = True  # mediastinum (anterior row)
    return m


def label_rows(volume_id: str, positives: list[tuple[str, str]]) -> list[dict]:
    """Long-form labels.parquet rows: one 0-row per absent label, one 1-row per (abnormality, location)."""
    present = {label_index(a, loc) for a, loc in positives}
    rows = [
        {"volume_id": volume_id, "abnormality": lab.abnormality, "location": lab.group, "value": 0}
        for lab in all_labels()
        if lab.index not in present
    ]
    rows += [{"volume_id": volume_id, "abnormality": a, "location": loc, "value": 1} for a, loc in positives]
    return rows


def build_small_store(
    root: Path,
    n_train: int = 4,
    n_valid: int = 2,
    geometry_name: str = "8x2x2",
    grid: tuple[int, int, int] = (8, 2, 2),
    variant: str = "nearest",
    seed: int = 0,
) -> Store:
    store = Store(str(root))
    rng = np.random.default_rng(seed)
    manifest, labels = [], []
    shapes = [(30, 70, 70), (21, 60, 66), (24, 64, 64)]
    for k in range(n_train + n_valid):
        vid = f"vol{k:03d}"
        shape = shapes[k % len(shapes)]
        hu = rng.normal(-800, 60, size=shape).astype(np.int16)
        positive = k % 2 == 0
        if positive:  # a bright nodule in the right lung (low x)
            z, y, x = shape[0] // 2, shape[1] // 2, shape[2] // 4
            hu[z - 2 : z + 2, y - 4 : y + 4, x - 4 : x + 4] = 300
        store.write_volume(vid, hu, {"spacing_mm": [0.8, 0.8, 0.8], "orientation": "IPL"})
        store.write_grid(geometry_name, variant, vid, grid_masks(grid), {"geometry": geometry_name, "variant": variant})
        split = "train" if k < n_train else "valid"
        manifest.append(
            {
                "volume_id": vid,
                "source": "test",
                "format": "synthetic",
                "status": "ok",
                "error": "",
                "shape": list(shape),
                "spacing": [0.8, 0.8, 0.8],
                "sha256": f"{k:064x}",
                "split": split,
            }
        )
        positives = [("nodule", "right_lung")] if positive else [("cardiomegaly", "heart")]
        labels += label_rows(vid, positives)
    store.write_table("manifest", pd.DataFrame(manifest))
    store.write_table("labels", pd.DataFrame(labels))
    return store
