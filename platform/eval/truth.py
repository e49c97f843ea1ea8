"""True lesion masks on the model's feature grid, read from the store.

Truth is part of the store contract (store.py): ingest carries a scan's lesion mask onto the stored
volume's voxels (`truth/<id>`) and PARTITION puts it on the feature grid with each downsampling method
(`truth_grid/<geometry>/<method>/<id>`; `area`: a cell is lesion when any lesion voxel falls in it).
Both are bitfields whose `truth_labels` attribute names each bit: a label name, or `confounder` for
a confounder region (its `confounder` attribute says which label that confounder tracks). A grid
truth counts only while the volume's truth is in the store and was made from the same mask (the same
`source_sha256`); otherwise the scan is scored without localization, and the job log says why.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctplatform.geometry import ModelGeometry, center_crop_or_pad, crop_or_pad_slices
from ctplatform.labels import N_LABELS, all_labels, label_by_name
from ctplatform.store import CONFOUNDER, IncompleteItemError, Store

log = logging.getLogger("ctplatform.eval")


@dataclass
class GridTruth:
    lesions: np.ndarray  # bool [80, H, D1, D2]: true lesion cells of each label (empty for most labels)
    confounder: np.ndarray | None  # bool [H, D1, D2], or None when the truth marks no confounder region


def decode(cells: np.ndarray, labels: list[str]) -> GridTruth:
    """A grid truth bitfield [H, D1, D2] and its bit names -> lesion cells per label and the confounder."""
    lesions = np.zeros((N_LABELS, *cells.shape), dtype=bool)
    confounder = None
    for bit, name in enumerate(labels):
        hit = (cells & cells.dtype.type(1 << bit)) != 0
        if name == CONFOUNDER:
            confounder = hit if confounder is None else confounder | hit
        else:
            lesions[label_by_name(name).index] |= hit
    return GridTruth(lesions, confounder)


def grid_truth_fingerprint(store: Store, volume_id: str, geometry: str, method: str) -> str | None:
    """The source_sha256 of a usable grid truth (see the module docstring), or None."""
    try:
        sha = store.truth(volume_id).attrs.get("source_sha256")
        grid = store.grid_truth(geometry, method, volume_id)
    except IncompleteItemError:
        return None
    return sha if sha and grid.attrs.get("source_sha256") == sha else None


@dataclass
class TruthSurvey:
    """Which scans have usable grid truth, and the confounder they mark."""

    fingerprints: dict[str, str | None]  # volume_id -> source_sha256 of its truth, or None
    confounder: tuple[str, str] | None = None  # (kind, target label) of the confounder region
    notes: list[str] = field(default_factory=list)

    @property
    def n_with_truth(self) -> int:
        return sum(v is not None for v in self.fingerprints.values())


def survey(store: Store, ids: list[str], geometry: ModelGeometry, method: str) -> TruthSurvey:
    """Look up the grid truth of `ids` (attributes only, no arrays) and log what was found."""
    with_truth = set(store.truth_ids())
    prints = {v: grid_truth_fingerprint(store, v, geometry.name, method) if v in with_truth else None for v in ids}
    out = TruthSurvey(prints)
    stale = sorted(v for v in ids if v in with_truth and prints[v] is None)
    if stale:
        out.notes.append(
            f"{len(stale)} scan(s) have lesion truth but none current on the {geometry.name} grid ({method}): "
            "re-run `ctplatform partition` to put it there; they are scored without localization"
        )
    specs: Counter[tuple[str, str]] = Counter()
    for v, fp in prints.items():
        spec = store.grid_truth(geometry.name, method, v).attrs.get("confounder") if fp else None
        if spec:
            specs[(str(spec.get("kind", "")), str(spec.get("label", "")))] += 1
    if specs:
        out.confounder = specs.most_common(1)[0][0]
        if len(specs) > 1:
            out.notes.append(f"scans disagree on the confounder ({dict(specs)}); using {out.confounder}")
    if out.n_with_truth:
        log.info("true lesion masks in the store for %d of %d scans", out.n_with_truth, len(ids))
    else:
        log.info("no lesion truth in the store for these scans: localization metrics are left out "
                 "(ingest scans with a truth mask to get them; docs/ingest.md)")
    for note in out.notes:
        log.warning(note)
    return out


def confounder_label(spec: tuple[str, str] | None) -> int | None:
    """Index of the label a confounder tracks, or None (no confounder, or none named)."""
    return label_by_name(spec[1]).index if spec and spec[1] else None


class TruthReader:
    """Grid truth of one scan from the store, with the method evaluation uses."""

    def __init__(self, store_root: str, geometry: ModelGeometry, method: str = "area") -> None:
        self.store = Store(store_root)
        self.geometry = geometry
        self.method = method

    def grid_truth(self, volume_id: str) -> GridTruth | None:
        if grid_truth_fingerprint(self.store, volume_id, self.geometry.name, self.method) is None:
            return None
        arr = self.store.grid_truth(self.geometry.name, self.method, volume_id)
        if tuple(arr.shape) != tuple(self.geometry.grid):
            raise ValueError(f"grid truth has shape {tuple(arr.shape)}, the model's grid is {self.geometry.grid}")
        return decode(arr[...], list(arr.attrs["truth_labels"]))


def read_grid_truth(store_root: str, volume_id: str, geometry: ModelGeometry, method: str = "area") -> Any:
    """One scan's GridTruth, or None when the store holds none usable."""
    return TruthReader(store_root, geometry, method).grid_truth(volume_id)


def label_mask(bits: np.ndarray, names: list[str], label: int) -> np.ndarray:
    """bool mask (the shape of `bits`) of one label's true lesion in a truth bitfield named by `names`."""
    name = all_labels()[label].name
    mask = sum(1 << b for b, n in enumerate(names) if n == name)
    return (bits & bits.dtype.type(mask)) != 0 if mask else np.zeros(bits.shape, dtype=bool)


def lesion_voxels(
    store: Store, volume_id: str, volume_shape: tuple[int, ...], input_shape: tuple[int, int, int], labels: list[int]
) -> dict[int, np.ndarray] | None:
    """Each label's true lesion voxels in the model's input crop, or None without voxel truth (real data).

    The truth (`truth/<id>`, on the stored volume's voxels) is cut exactly as model.dataset.read_crop
    cuts the volume (the same centre crop/pad), padding with "no lesion". A truth whose shape is not
    the volume's is not drawn (it would be misplaced).
    """
    try:
        arr = store.truth(volume_id)
    except IncompleteItemError:
        return None
    if tuple(arr.shape) != tuple(volume_shape):
        log.warning("lesion truth of a figure scan has shape %s, its volume %s: not drawn", arr.shape, volume_shape)
        return None
    src = tuple(slice(a, b) for a, b, _, _ in crop_or_pad_slices(tuple(arr.shape), tuple(input_shape)))
    bits = center_crop_or_pad(np.asarray(arr[src]), tuple(input_shape), fill=0)
    names = [str(n) for n in arr.attrs["truth_labels"]]
    return {j: label_mask(bits, names, j) for j in labels}
