"""A torch Dataset over the store: model input, grid masks and label targets of one scan.

One item (pure functions, tested without Ray or a DataLoader):
    volume int16 [z, y, x] --read only the crop window, pad with the block's minimum--> input_shape
      --augment (same draw for the grid masks)--> clip HU to train.hu_clip, scale to [0, 1],
      subtract train.center --> slice groups x float32 [H, 3, Y, X]
    grid/<geometry>/<variant>/<id> bool [3, H, D1, D2]   (augmented like the volume)
    labels.parquet rows --labels.encode_volume_labels--> y float32 [80], region_bits uint8 [80]

With preprocess="device" (train.preprocess) an item stops after the crop: the int16 window is
decoded into a reused shared-memory slot and the augmentation is only drawn; device_input.py does the
rest on the training device, giving the same tensors.

Arrays are opened lazily inside each loader process (the Store is re-created there), and the
DataLoader uses the `forkserver` start method: zarr-python 3 can deadlock in a forked child.
Padding uses the minimum of the block actually read (the crop window), not of the whole volume: the
two differ only if the scan's minimum lies outside the window, and both are clipped to hu_clip[0].
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from numcodecs import blosc as numcodecs_blosc
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ctplatform.geometry import ModelGeometry, center_crop_or_pad, crop_or_pad_slices
from ctplatform.labels import N_LABELS, encode_volume_labels
from ctplatform.store import IncompleteItemError, Store
from ctplatform.model.augment import (
    NO_AUGMENTATION,
    apply_to_grid,
    apply_to_volume,
    augmentation_rng,
    Augmentation,
    draw_augmentation,
)
from ctplatform.model.chunk_read import WindowReader
from ctplatform.model.device_input import CONSUMER_HELD, HostSlots, encode_augmentation, read_crop_into

if TYPE_CHECKING:
    from ctplatform.config import Config

log = logging.getLogger("ctplatform.train")

#: Start method of DataLoader worker processes (zarr 3 + fork can deadlock).
LOADER_CONTEXT = "forkserver"
#: Batches each loader process prepares ahead.
PREFETCH_FACTOR = 2

#: Where an item becomes model input: "loader" (all of it in the loader process, float32 items) or
#: "device" (the loader ships the int16 crop through a shared slot; device_input.DeviceBatches
#: augments and normalises it on the training device).
Preprocess = Literal["loader", "device"]


class MissingGridMaskError(FileNotFoundError):
    """A scan has no grid mask for the model's geometry and the configured variant."""


def missing_grid_message(store_root: str, geometry: str, variant: str, ids: list[str]) -> str:
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return (
        f"grid masks grid/{geometry}/{variant} are missing in {store_root} for {len(ids)} volume(s): "
        f"{shown}. Build them with `ctplatform partition --store {store_root} --config FILE` using the same "
        f"model section (feature grid {geometry}) and partition.variants containing {variant!r}"
    )


# ------------------------------------------------------------------------------ splits and labels
@dataclass(frozen=True)
class SplitIndex:
    """The scans of one split with their label targets."""

    ids: list[str]
    y: np.ndarray  # float32 [N, 80]
    region_bits: np.ndarray  # uint8 [N, 80]
    qc_excluded: int = 0  # scans left out for a partition QC flag in `exclude_qc_flags`
    qc_fallback: int = 0  # kept scans whose grid masks are QC's heuristic fallback

    def __len__(self) -> int:
        return len(self.ids)


def qc_flags(store: Store) -> dict[str, tuple[set[str], bool]]:
    """volume id -> (partition QC flags, fallback) from partition.parquet (empty when absent)."""
    table = store.read_table("partition")
    if table is None or "qc_flags" not in table.columns:
        return {}
    fallback = table["fallback"] if "fallback" in table.columns else [False] * len(table)
    return {
        str(v): ({f for f in str(flags or "").split(";") if f}, bool(fb))
        for v, flags, fb in zip(table["volume_id"], table["qc_flags"], fallback)
    }


def load_split(store: Store, split: str, exclude_qc_flags: tuple[str, ...] | list[str] = ()) -> SplitIndex:
    """Scans of `split` (manifest status ok) that have labels; others are skipped with a warning.

    Scans whose partition QC raised one of `exclude_qc_flags` (e.g. `no_lungs`: nothing for the
    mask loss to hold attention to) are left out and counted (`qc_excluded`, never named)."""
    manifest = store.read_table("manifest")
    if manifest is None:
        raise FileNotFoundError(f"{store.root} has no manifest.parquet: run `ctplatform ingest` first")
    labels = store.read_table("labels")
    if labels is None:
        raise FileNotFoundError(
            f"{store.root} has no labels.parquet: label the reports first (`ctplatform label-reports`)"
        )
    for col in ("volume_id", "status", "split"):
        if col not in manifest.columns:
            raise ValueError(f"manifest.parquet in {store.root} has no {col!r} column")
    rows = manifest[(manifest["status"] == "ok") & (manifest["split"] == split)]
    ids = sorted(rows["volume_id"].astype(str).unique())
    by_volume = {
        vid: g for vid, g in labels[labels["volume_id"].isin(ids)].groupby("volume_id", sort=False)
    }
    kept, ys, bits = [], [], []
    for vid in ids:
        g = by_volume.get(vid)
        if g is None:
            continue
        y, b = encode_volume_labels(list(zip(g["abnormality"], g["location"], g["value"].astype(int))))
        kept.append(vid)
        ys.append(y)
        bits.append(b)
    if len(kept) < len(ids):
        log.warning(
            "%d of %d %r scans have no rows in labels.parquet and are skipped", len(ids) - len(kept), len(ids), split
        )
    excluded = fallback = 0
    if exclude_qc_flags:
        qc = qc_flags(store)
        keep = [not (qc.get(v, (set(), False))[0] & set(exclude_qc_flags)) for v in kept]
        excluded = keep.count(False)
        kept = [v for v, k in zip(kept, keep) if k]
        ys = [y for y, k in zip(ys, keep) if k]
        bits = [b for b, k in zip(bits, keep) if k]
        fallback = sum(qc.get(v, (set(), False))[1] for v in kept)
        if excluded:
            log.warning("%d of %d %r scans are left out: partition QC flagged %s", excluded, len(keep), split,
                        "/".join(exclude_qc_flags))
    return SplitIndex(
        kept,
        np.stack(ys) if ys else np.zeros((0, N_LABELS), np.float32),
        np.stack(bits) if bits else np.zeros((0, N_LABELS), np.uint8),
        excluded,
        fallback,
    )


def scored_labels(train: SplitIndex, mode: str = "all") -> np.ndarray:
    """Indices of the labels a run trains and scores: all 80, or (`present`) those with a positive in
    the training split, so labels that never occur weigh in neither loss nor in the summaries."""
    if mode == "all":
        return np.arange(N_LABELS)
    if mode == "present":
        present = np.nonzero((train.y > 0.5).any(axis=0))[0]
        if present.size == 0:
            raise ValueError("train.labels=present: the training split has no positive label at all")
        return present
    raise ValueError(f"unknown train.labels {mode!r}: use 'all' or 'present'")


def check_grid_masks(store: Store, geometry: ModelGeometry, variant: str, ids: list[str]) -> None:
    """Raise MissingGridMaskError naming the scans that lack the grid mask training needs."""
    have = set(store.grid_ids(geometry.name, variant))
    missing = [i for i in ids if i not in have]
    if missing:
        raise MissingGridMaskError(missing_grid_message(store.root, geometry.name, variant, missing))


def check_volumes(store: Store, ids: list[str]) -> None:
    """Raise FileNotFoundError naming the scans whose volume is absent or unfinished."""
    have = set(store.volume_ids())
    missing = [i for i in ids if i not in have]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} volume(s) of the manifest are not (completely) in {store.root}: {shown}. "
            f"Re-run `ctplatform ingest` for that store (it resumes), or mark them failed in the manifest"
        )


# ------------------------------------------------------------------------------ one item
def read_crop(volume: Any, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Centre crop / pad of a [z, y, x] array (zarr or numpy) to input_shape, reading only the window."""
    src = tuple(slice(a, b) for a, b, _, _ in crop_or_pad_slices(tuple(volume.shape), input_shape))
    block = np.asarray(volume[src])
    return center_crop_or_pad(block, input_shape, fill=block.min() if block.size else 0)


def normalize_hu(volume: np.ndarray, hu_clip: tuple[float, float], center: float) -> np.ndarray:
    """Clip HU, scale to [0, 1], subtract `center`: float32."""
    lo, hi = hu_clip
    out = np.clip(volume.astype(np.float32), lo, hi)
    out -= lo
    out *= 1.0 / (hi - lo)
    out -= center
    return out


def to_slice_groups(volume: np.ndarray, slices_per_group: int = 3) -> np.ndarray:
    """[Z, Y, X] -> [H, slices_per_group, Y, X] (consecutive axial slices form one group)."""
    z, y, x = volume.shape
    if z % slices_per_group:
        raise ValueError(f"depth {z} is not a multiple of {slices_per_group}")
    return volume.reshape(z // slices_per_group, slices_per_group, y, x)


class StoreDataset(Dataset):
    """Items of one split; a key is an index, or (epoch, index) to draw that epoch's augmentation."""

    def __init__(
        self,
        store_root: str,
        index: SplitIndex,
        geometry: ModelGeometry,
        variant: str,
        hu_clip: tuple[float, float] = (-1000.0, 800.0),
        center: float = 0.449,
        augment: bool = False,
        seed: int = 0,
        preprocess: Preprocess = "loader",
    ) -> None:
        self.store_root = store_root
        self.index = index
        self.geometry = geometry
        self.variant = variant
        self.hu_clip = tuple(hu_clip)
        self.center = center
        self.augment = augment
        self.seed = seed
        if preprocess not in ("loader", "device"):
            raise ValueError(f"preprocess must be 'loader' or 'device', not {preprocess!r}")
        self.preprocess = preprocess
        self.slots: HostSlots | None = None  # set by make_loader in "device" mode
        self._store: Store | None = None
        self._reader: WindowReader | None = None
        self._items = 0  # items this process has written into slots (round robin)

    @classmethod
    def from_config(
        cls, cfg: "Config", index: SplitIndex, augment: bool, preprocess: str | None = None
    ) -> "StoreDataset":
        """The configured dataset of `index`. A dataset indexed directly (not through make_loader's
        device slots) must ask for preprocess='loader': the device path needs the loader's slots."""
        return cls(
            cfg.store_path,
            index,
            cfg.model.geometry,
            cfg.train.grid_variant,
            hu_clip=cfg.train.hu_clip,
            center=cfg.train.center,
            augment=augment and cfg.train.augment,
            seed=cfg.train.seed,
            preprocess=preprocess or cfg.train.preprocess,
        )

    def __getstate__(self) -> dict[str, Any]:
        # Loader processes open their own store (and zarr handles) lazily.
        return {**self.__dict__, "_store": None, "_reader": None, "_items": 0}

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.store_root)
        return self._store

    def __len__(self) -> int:
        return len(self.index)

    def read_grid(self, volume_id: str) -> np.ndarray:
        try:
            # Through the pack when there is one: this process then reads each pack chunk once an epoch.
            grid = self.store.read_grids(self.geometry.name, self.variant, [volume_id])[0]
        except IncompleteItemError:
            raise MissingGridMaskError(
                missing_grid_message(self.store_root, self.geometry.name, self.variant, [volume_id])
            ) from None
        want = (3, *self.geometry.grid)
        if grid.shape != want:
            raise ValueError(
                f"grid mask of {volume_id} has shape {grid.shape}, but the model's feature grid needs {want}; "
                "re-run `ctplatform partition` with this config's model section"
            )
        return grid

    def augmentation(self, epoch: int, i: int) -> Augmentation:
        if not self.augment:
            return NO_AUGMENTATION
        _, y, x = self.geometry.input_shape
        return draw_augmentation(augmentation_rng(self.seed, epoch, i), square=y == x)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        if self.preprocess == "device":
            return self.device_item(epoch, i)
        volume_id = self.index.ids[i]
        try:
            hu = read_crop(self.store.volume(volume_id), self.geometry.input_shape)
        except IncompleteItemError:
            raise FileNotFoundError(
                f"volume {volume_id} is not (completely) in {self.store_root}: re-run `ctplatform ingest`"
            ) from None
        grid = self.read_grid(volume_id)
        aug = self.augmentation(epoch, i)
        hu = apply_to_volume(hu, aug)
        grid = apply_to_grid(grid, aug)
        x_in = to_slice_groups(normalize_hu(hu, self.hu_clip, self.center), self.geometry.slices_per_group)
        return {
            "x": torch.from_numpy(np.ascontiguousarray(x_in)),
            "grid": torch.from_numpy(np.ascontiguousarray(grid)),
            "y": torch.from_numpy(self.index.y[i].copy()),
            "region_bits": torch.from_numpy(self.index.region_bits[i].copy()),
            "index": i,
        }

    def device_item(self, epoch: int, i: int) -> dict[str, Any]:
        """The crop decoded into this process's next slot; augmentation drawn, not applied."""
        if self.slots is None:
            raise RuntimeError("a 'device' preprocess dataset gets its slots from make_loader")
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        slot = self._items % self.slots.per_worker
        self._items += 1
        volume_id = self.index.ids[i]
        if self._reader is None:
            if info is not None:
                # A loader process is one core (cpus_per_worker counts them): Blosc's thread pool
                # would only oversubscribe it.
                numcodecs_blosc.use_threads = False
            self._reader = WindowReader()
        self.slots.seq[worker, slot] = -1  # being written
        try:
            read_crop_into(self._reader, self.store.volume(volume_id), self.slots.hu[worker, slot].numpy())
        except IncompleteItemError:
            raise FileNotFoundError(
                f"volume {volume_id} is not (completely) in {self.store_root}: re-run `ctplatform ingest`"
            ) from None
        self.slots.seq[worker, slot] = self._items
        return {
            "slot": torch.tensor([worker, slot, self._items], dtype=torch.int64),
            "grid": torch.from_numpy(np.ascontiguousarray(self.read_grid(volume_id))),
            "aug": encode_augmentation(self.augmentation(epoch, i)),
            "y": torch.from_numpy(self.index.y[i].copy()),
            "region_bits": torch.from_numpy(self.index.region_bits[i].copy()),
            "index": i,
        }


# ------------------------------------------------------------------------------ sampling and loading
class EpochSampler(Sampler):
    """This rank's shard of the training indices, shuffled per epoch, yielded as (epoch, index).

    Wraps DistributedSampler (every rank gets the same number of items, padding by repetition, so
    DDP ranks take the same number of steps); carrying the epoch in the key lets persistent loader
    processes draw that epoch's augmentation.
    """

    def __init__(self, n: int, rank: int, world_size: int, seed: int, shuffle: bool = True) -> None:
        self.inner = DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class ShardSampler(Sampler):
    """Indices rank, rank + world_size, ... : a disjoint shard without padding (validation)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: StoreDataset, sampler: Sampler, batch_size: int, workers: int, share_slots: HostSlots | None = None
) -> DataLoader:
    """DataLoader with `workers` forkserver processes (0: load in the training process).

    In "device" mode the dataset gets its shared slots here (before loader processes start), and the
    loader must be iterated through device_input.DeviceBatches, which turns slots into model input.
    `share_slots`: another loader's slots, reused when they fit; only for loaders never iterated at
    the same time (training and validation), whose slots would otherwise both stay allocated.
    """
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {
            "multiprocessing_context": LOADER_CONTEXT,
            "persistent_workers": True,
            "prefetch_factor": PREFETCH_FACTOR,
        }
    device_mode = dataset.preprocess == "device"
    if device_mode:
        ahead = PREFETCH_FACTOR if workers > 0 else 0
        need = (max(workers, 1), batch_size * (ahead + CONSUMER_HELD), *dataset.geometry.input_shape)
        fits = share_slots is not None and all(a >= b for a, b in zip(share_slots.hu.shape[:2], need[:2])) and share_slots.shape == need[2:]
        dataset.slots = share_slots if fits else HostSlots(need[0], need[1], need[2:])
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        # faster host-to-GPU copies (a no-op on CPU machines); device-mode slots are page-locked in place
        pin_memory=torch.cuda.is_available() and not device_mode,
        **kwargs,
    )
