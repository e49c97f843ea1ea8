"""The per-task layer of `ctplatform evaluate`: score a batch of volumes, or draw one scan.

Both run inside Ray tasks (and directly in tests): they rebuild the model from its state dict on
the task's device, read their volumes from the store through the training Dataset (no
augmentation), and return small results or write their own files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.config import Config
from ctplatform.eval.figures import render_scan
from ctplatform.eval.scoring import ScanScores, SliceSums, explain, score_outputs
from ctplatform.eval.truth import lesion_voxels
from ctplatform.model.allowed_regions import allowed_regions
from ctplatform.model.axialnet import AxialNet
from ctplatform.model.dataset import SplitIndex, StoreDataset, read_crop
from ctplatform.store import Store

#: Offset of the randomised model's seed from eval.seed (a constant far from usual training seeds).
SANITY_SEED = 982_451_653


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _build(state: dict, cfg_json: dict, threads: int):
    """The trained model on this worker's device (a GPU when the task was given one)."""
    import torch

    torch.set_num_threads(max(1, threads))
    run_cfg = Config.model_validate(cfg_json)
    model = AxialNet(run_cfg.model.geometry, pretrained_weights=None)
    model.load_state_dict(state)
    return model.eval().to(_device()), run_cfg


def worker_options(e: Any) -> dict[str, Any]:
    """Settings every scoring/rendering task needs (from EvalConfig)."""
    return {
        "forward_batch": e.forward_batch,
        "seed": e.seed,
        "threads": max(1, int(e.cpus_per_task)),
        "truth_method": e.truth_grid_method,
        "slice_chunk": e.slice_chunk,
    }


def _dataset(run_cfg: Config, store_root: str, ids: list[str], y: np.ndarray, bits: np.ndarray):
    return StoreDataset(
        store_root,
        SplitIndex(list(ids), y, bits),
        run_cfg.model.geometry,
        run_cfg.train.grid_variant,
        hu_clip=run_cfg.train.hu_clip,
        center=run_cfg.train.center,
        augment=False,
    )


def score_volumes(
    state: dict,
    cfg_json: dict,
    store_root: str,
    split: str,
    ids: list[str],
    y: np.ndarray,
    bits: np.ndarray,
    sanity: np.ndarray,
    truth: dict[str, str | None] | None,
    opts: dict[str, Any],
    prior: np.ndarray | None = None,
) -> dict[str, Any]:
    """Score a batch of volumes: {"scans": [ScanScores], "sums": SliceSums, "errors": [(id, msg)]}.

    truth: volume_id -> fingerprint of its grid truth in the store (eval.truth.survey), None without.
    prior: the image-blind prior map float [80, H, D1, D2] (eval.prior), scored beside the model's maps.

    Pure with respect to Ray (called inside a task, or directly in tests); opts: worker_options().
    """
    import torch

    model, run_cfg = _build(state, cfg_json, opts["threads"])
    geometry = run_cfg.model.geometry
    dataset = _dataset(run_cfg, store_root, ids, y, bits)
    chunk = opts.get("slice_chunk")
    reader = None
    if truth and any(truth.values()):
        from ctplatform.eval.truth import TruthReader

        reader = TruthReader(store_root, geometry, opts.get("truth_method", "area"))
    random_model = None
    if np.any(sanity):
        # Every task draws the same randomised model, and never the training run's own initialisation
        # (training seeds torch with train.seed; a barely trained model would then look "faithful").
        torch.manual_seed(SANITY_SEED + opts.get("seed", 0))
        random_model = AxialNet(geometry, pretrained_weights=None).eval().to(_device())
    sums = SliceSums.zeros(geometry.grid[0])
    scans: list[ScanScores] = []
    errors: list[tuple[str, str]] = []
    items: list[dict] = []

    def flush() -> None:
        if not items:
            return
        x = torch.stack([it["x"] for it in items])
        yb = torch.stack([it["y"] for it in items])
        out = explain(model, x, chunk)
        g_true = allowed_regions(
            torch.stack([it["region_bits"] for it in items]), torch.stack([it["grid"] for it in items])
        )
        rand = None
        if random_model is not None and any(sanity[it["index"]] for it in items):
            rand = explain(random_model, x, chunk)["hirescam"]
        lesions = confounders = None
        if reader is not None:
            found = [_grid_truth(reader, ids[it["index"]], errors) if truth.get(ids[it["index"]]) else None
                     for it in items]
            lesions = [f.lesions if f else None for f in found]
            confounders = [f.confounder if f else None for f in found]
        scans.extend(
            score_outputs(
                [ids[it["index"]] for it in items],
                [split] * len(items),
                out,
                yb.numpy(),
                g_true.numpy(),
                random_hirescam=rand,
                lesions=lesions,
                confounders=confounders,
                prior=prior,
            )
        )
        sums.add(out["slice_scores"], yb.numpy())
        items.clear()

    for i, vid in enumerate(ids):
        try:
            items.append(dataset[i])
        except Exception as e:  # one bad scan must not sink the batch: report it, go on
            errors.append((vid, f"{type(e).__name__}: {e}"))
            continue
        if len(items) >= opts.get("forward_batch", 1):
            flush()
    flush()
    return {"scans": scans, "sums": sums, "errors": errors}


def _grid_truth(reader: Any, volume_id: str, errors: list[tuple[str, str]]) -> Any:
    """The scan's grid truth, or None (the scan is still scored) when its stored truth is unusable."""
    try:
        return reader.grid_truth(volume_id)
    except Exception as e:
        errors.append((volume_id, f"truth masks unusable, localization skipped: {type(e).__name__}: {e}"))
        return None


def render_volume(
    state: dict,
    cfg_json: dict,
    store_root: str,
    volume_id: str,
    y: np.ndarray,
    bits: np.ndarray,
    labels: list[int],
    out_png: str,
    heatmap_dir: str | None,
    key: str,
    opts: dict[str, Any],
    notes: list[str] | None = None,
    title: str = "",
) -> list[str]:
    """Draw one scan (Figure 4 panel) and write its NIfTI heatmaps; returns the paths written.

    notes: each label's confidence note (figures.FigurePick); title: the model and split. The scan's
    true lesions are outlined when the store holds voxel truth for it.
    """
    model, run_cfg = _build(state, cfg_json, opts["threads"])
    geometry = run_cfg.model.geometry
    item = _dataset(run_cfg, store_root, [volume_id], y[None], bits[None])[0]
    out = explain(model, item["x"][None], opts.get("slice_chunk"))
    g_true = allowed_regions(item["region_bits"][None], item["grid"][None])[0].numpy()
    store = Store(store_root)
    vol = store.volume(volume_id)
    hu = read_crop(vol, geometry.input_shape)
    lesions = lesion_voxels(store, volume_id, tuple(vol.shape), geometry.input_shape, labels)
    affine = vol.attrs.get("affine")
    paths = render_scan(
        out,
        hu,
        g_true,
        labels,
        Path(out_png),
        Path(heatmap_dir) if heatmap_dir and affine is not None else None,
        key=key,
        stored_shape=tuple(vol.shape),
        affine=affine,
        notes=notes,
        lesions=lesions,
        title=title,
    )
    return [str(p) for p in paths]
