"""The image-blind prior map of an evaluation comes from the training split's positive scans only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctplatform.config import load_config
from ctplatform.eval.prior import training_prior
from ctplatform.labels import ORGANS, label_index
from ctplatform.store import Store

NODULE = ("nodule", "right_lung")
CARDIOMEGALY = ("cardiomegaly", "heart")


def _store(root, with_train_grids: bool = True):
    """A store of grid masks and labels only (the prior never reads a volume)."""
    geom = load_config(None, ["model.input_shape=[24,64,64]", "model.custom_conv_padding=1"]).model.geometry
    h = geom.grid[0]
    store = Store(str(root))
    scans = {  # id: (split, positive labels, slice groups of the right lung, of the mediastinum)
        "t0": ("train", [NODULE], range(0, 4), range(0)),
        "t1": ("train", [NODULE], range(2, 6), range(0)),
        "t2": ("train", [CARDIOMEGALY], range(0, h), range(h - 1, h)),  # nodule-negative: its lung never counts
        "s0": ("test", [NODULE, CARDIOMEGALY], range(0, h), range(0, h)),  # not training: never counts
    }
    manifest, labels = [], []
    for vid, (split, positive, lung, med) in scans.items():
        manifest.append({"volume_id": vid, "status": "ok", "split": split})
        labels += [{"volume_id": vid, "abnormality": a, "location": loc, "value": 1} for a, loc in positive]
        labels += [{"volume_id": vid, "abnormality": a, "location": loc, "value": 0}
                   for a, loc in (NODULE, CARDIOMEGALY) if (a, loc) not in positive]
        if split == "train" and not with_train_grids:
            continue
        mask = np.zeros((3, *geom.grid), bool)
        mask[ORGANS.index("right_lung"), list(lung)] = True
        mask[ORGANS.index("mediastinum"), list(med)] = True
        store.write_grid(geom.name, "area", vid, mask, {"geometry": geom.name, "variant": "area"})
    store.write_table("manifest", pd.DataFrame(manifest))
    store.write_table("labels", pd.DataFrame(labels))
    return store, geom


def test_prior_is_the_mean_allowed_region_of_the_training_positives(tmp_path):
    store, geom = _store(tmp_path / "store")
    got = training_prior(store, "train", geom, "area", batch=2)  # two batches: sums add up
    assert got.notes == [] and got.scans == 3 and got.prior.shape == (80, *geom.grid)
    nodule = got.prior[label_index(*NODULE)]
    want = np.zeros(geom.grid[0])
    want[[0, 1, 4, 5]] = 0.5  # t0 and t1 only: t2 (negative) and s0 (test) allow every group
    want[[2, 3]] = 1.0
    assert np.allclose(nodule, want[:, None, None])
    heart = got.prior[label_index(*CARDIOMEGALY)]
    assert np.allclose(heart[-1], 1.0) and np.allclose(heart[:-1], 0.0)  # t2 alone, never the test scan
    never = label_index("emphysema", "lung")
    assert np.all(got.prior[never] == 1.0)  # no positive training scan: a uniform map


@pytest.mark.parametrize("case", ["no split named", "split absent", "no grid masks"])
def test_without_a_usable_training_split_the_prior_is_skipped_with_a_note(tmp_path, case):
    store, geom = _store(tmp_path / "store", with_train_grids=case != "no grid masks")
    split = {"no split named": None, "split absent": "training", "no grid masks": "train"}[case]
    got = training_prior(store, split, geom, "area")
    assert got.prior is None and len(got.notes) == 1
    assert got.notes[0].startswith("the image-blind prior map is not scored")
