"""The model-ready input path: loader processes ship int16 HU crops; the device does the rest.

    loader process: decode only the crop's chunks (chunk_read) into a reused shared-memory slot
        (padded with the window's minimum, as read_crop does) --> {slot, grid, aug, y, region_bits}
    training process: slot --non-blocking copy (pinned slot)--> device --flip / rot90 (volume and
        grid masks alike), clip, scale, subtract centre, slice groups--> the model's batch

Every step after the decode is an elementwise or index op, so it costs the GPU microseconds instead
of costing a loader core ~0.2 s per paper-geometry volume, and the copy carries int16 (half the bytes
of float32). The ops and their order are the loader path's (augment, then float32, clip, - lo,
* 1 / (hi - lo), - centre), so the model sees the same tensors (tests/model/test_device_input.py).

Slots are reused round robin: a loader process has at most `prefetch_factor` batches outstanding and
the consumer holds at most two (the one in use, the one being copied), so `batch_size x
(prefetch_factor + 2)` slots per process are never overwritten while read. Each slot carries a
sequence number that the consumer checks before and after its copy: a broken assumption raises
instead of training on a torn volume.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ctplatform.geometry import crop_or_pad_slices
from ctplatform.model.augment import Augmentation
from ctplatform.model.chunk_read import WindowReader

#: Batches the consumer holds at once beyond the loader's prefetch (in use + being copied).
CONSUMER_HELD = 2


class SlotOverwrittenError(RuntimeError):
    """A loader process reused a slot before the training process had copied it."""


class HostSlots:
    """int16 volume buffers in shared memory: `per_worker` slots for each loader process.

    Created in the training process before the loader starts (they travel to loader processes as
    shared-memory handles); `pin()` page-locks them there so host-to-device copies are asynchronous.
    """

    def __init__(self, workers: int, per_worker: int, shape: tuple[int, int, int]) -> None:
        self.shape = tuple(shape)
        self.hu = torch.empty((workers, per_worker, *shape), dtype=torch.int16).share_memory_()
        self.seq = torch.zeros((workers, per_worker), dtype=torch.int64).share_memory_()
        self._pinned = False

    @property
    def per_worker(self) -> int:
        return self.hu.shape[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pinned": False}  # page-locking is per process

    def pin(self) -> None:
        """Page-lock the slots in this process (CUDA only; once)."""
        if self._pinned or not torch.cuda.is_available():
            return
        nbytes = self.hu.numel() * self.hu.element_size()
        err = torch.cuda.cudart().cudaHostRegister(self.hu.data_ptr(), nbytes, 0)
        self._pinned = int(err) == 0  # unregistered slots still work, with synchronous copies


def read_crop_into(reader: WindowReader, volume: Any, out: np.ndarray) -> None:
    """read_crop into a given buffer: the centre window is decoded in place, the rest filled with its minimum."""
    parts = crop_or_pad_slices(tuple(volume.shape), out.shape)
    src = tuple(slice(a, b) for a, b, _, _ in parts)
    dst = tuple(slice(c, d) for _, _, c, d in parts)
    window = out[dst]
    reader.read(volume, src, window)
    if window.shape == out.shape:
        return
    fill = window.min() if window.size else 0
    for axis, (_, _, c, d) in enumerate(parts):
        lead = (slice(None),) * axis
        out[lead + (slice(0, c),)] = fill
        out[lead + (slice(d, None),)] = fill


def encode_augmentation(aug: Augmentation) -> torch.Tensor:
    """int64 [2]: flip axis (-1: none) and quarter turns; collates into [B, 2]."""
    return torch.tensor([-1 if aug.flip_axis is None else aug.flip_axis, aug.rot90_k], dtype=torch.int64)


def augment_on_device(hu: torch.Tensor, grid: torch.Tensor, flip_axis: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """augment.apply_to_volume / apply_to_grid in torch: hu [Z, Y, X], grid [C, H, D1, D2]."""
    if flip_axis >= 0:
        hu, grid = hu.flip(flip_axis), grid.flip(flip_axis + 1)
    if k:
        hu, grid = torch.rot90(hu, k, (1, 2)), torch.rot90(grid, k, (2, 3))
    return hu, grid


def normalize_on_device(hu: torch.Tensor, hu_clip: tuple[float, float], center: float) -> torch.Tensor:
    """dataset.normalize_hu in torch, the same float32 ops in the same order."""
    lo, hi = hu_clip
    x = hu.to(torch.float32, memory_format=torch.contiguous_format)
    x.clamp_(lo, hi)
    x.sub_(lo)
    x.mul_(1.0 / (hi - lo))
    x.sub_(center)
    return x


def model_batch(
    hu: list[torch.Tensor],
    grid: torch.Tensor,
    aug: torch.Tensor,
    hu_clip: tuple[float, float],
    center: float,
    slices_per_group: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [B, H, g, Y, X] float32, grid masks [B, C, H, D1, D2]) from int16 crops on the device."""
    xs, grids = [], []
    for b, volume in enumerate(hu):
        v, g = augment_on_device(volume, grid[b], int(aug[b, 0]), int(aug[b, 1]))
        xs.append(v)
        grids.append(g)
    # one volume (the paper's batch): no stacking copy; the float32 conversion is the copy
    x = normalize_on_device(torch.stack(xs) if len(xs) > 1 else xs[0].unsqueeze(0), hu_clip, center)
    n, z, y, w = x.shape
    return x.reshape(n, z // slices_per_group, slices_per_group, y, w), torch.stack(grids).contiguous()


def _small_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class DeviceBatches:
    """Iterate a make_loader loader as model-ready batches on `device`, one batch staged ahead.

    With a loader in "device" mode the next batch's slots are copied (on CUDA: on a side stream,
    overlapping the current step) and preprocessed on the device; in "loader" mode batches are only
    moved. Either way the batch has x, grid, y, region_bits and index, as the loader path gives.
    """

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.dataset = getattr(loader, "dataset", None)  # any iterable of loader-path batches works too
        self.slots: HostSlots | None = getattr(self.dataset, "slots", None)
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        if self.slots is not None and cuda:
            self.slots.pin()

    def __len__(self) -> int:
        return len(self.loader)

    def _stage(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with ctx:
            if "slot" not in batch:
                return _small_to_device(batch, self.device), _record(self.stream)
            ds, slots = self.dataset, self.slots
            ref, aug = batch.pop("slot"), batch.pop("aug")  # both stay on the host: no device sync to read them
            _check(slots, ref)
            hu = [slots.hu[int(w), int(s)].to(self.device, non_blocking=True) for w, s, _ in ref.tolist()]
            copied = _record(self.stream)
            small = _small_to_device(batch, self.device)
            x, grid = model_batch(hu, small.pop("grid"), aug, ds.hu_clip, ds.center, ds.geometry.slices_per_group)
            out = {"x": x, "grid": grid, **small}
            event = _record(self.stream)
        if copied is not None:
            copied.synchronize()  # the slots' copies are done (preprocessing may still run): reusable from here on
        _check(slots, ref)
        return out, event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = iter(self.loader)
        try:
            staged = self._stage(next(it))
        except StopIteration:
            return
        while staged is not None:
            batch, event = staged
            try:
                staged = self._stage(next(it))
            except StopIteration:
                staged = None
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                for v in batch.values():  # made on the side stream, used and freed on this one
                    if torch.is_tensor(v) and v.is_cuda:
                        v.record_stream(current)
            yield batch


def _check(slots: HostSlots, ref: torch.Tensor) -> None:
    for w, s, seq in ref.tolist():
        if int(slots.seq[w, s]) != seq:
            raise SlotOverwrittenError(
                f"loader process {w} overwrote slot {s} before it was copied: the consumer held more "
                "batches than make_loader's slots allow (iterate a device-mode loader with DeviceBatches)"
            )


def _record(stream: Any) -> Any:
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event
