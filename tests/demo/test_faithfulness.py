"""The faithfulness table: who won a row, the printed table and the JSON, from a made-up report."""

from __future__ import annotations

import json
import math

from ctplatform.demo.faithfulness import CLASS_ONLY, MASK_LOSS, conclusion, format_table, to_json, winner


def _report() -> dict:
    keys = ["test:organ_iou_hirescam", "test:organ_iou_prior", "test:auroc_median", "test:chance_half",
            "shifted:reliance_zmarker", "shifted:chance_half", "test:deletion_hirescam_k1", "test:deletion_gradcam_k1",
            "test:deletion_random_k1"]
    c = dict.fromkeys(keys, 0.5) | {"test:organ_iou_hirescam": 0.4, "shifted:reliance_zmarker": 0.95}
    m = dict.fromkeys(keys, 0.5) | {"test:organ_iou_hirescam": 0.6, "shifted:reliance_zmarker": 0.55}
    d = {k: m[k] - c[k] for k in keys}
    ci = {k: [d[k] - 0.05, d[k] + 0.05] for k in keys}
    return {"seeds": [0], "confounders": {"fat": "great_vessel_atherosclerosis", "zmarker": "lung_mass"},
            "mean_over_seeds": {CLASS_ONLY: c, MASK_LOSS: m}, "mask_minus_class_only": d,
            "mask_minus_class_only_ci95": ci, "deletion_ks": [1]}


def test_winner_reads_the_interval() -> None:
    assert winner(0.2, 0.1, 0.3, "higher") == MASK_LOSS
    assert winner(-0.2, -0.3, -0.1, "higher") == CLASS_ONLY
    assert winner(-0.2, -0.3, -0.1, "lower") == MASK_LOSS
    assert winner(0.1, -0.1, 0.3, "higher").startswith("neither")
    assert winner(math.nan, 0, 1, "higher") == "n/a"


def test_table_names_models_rows_baselines_and_a_conclusion(tmp_path) -> None:
    rep = _report()
    text = format_table(rep)
    assert f"| {CLASS_ONLY} | {MASK_LOSS} |" in text
    assert "HiResCAM OrganIoU" in text and "image-blind prior map 0.500" in text
    assert "reliance of the lung_mass score on the z-marker" in text
    row = next(line for line in text.splitlines() if line.startswith("| HiResCAM OrganIoU"))
    assert "+0.200 [+0.150, +0.250]" in row and MASK_LOSS in row
    assert conclusion(rep).startswith("Conclusion: over 1 seed(s)")
    rep["mean_over_seeds"][CLASS_ONLY]["test:auroc_median"] = math.nan
    to_json(rep, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["mean_over_seeds"][CLASS_ONLY]["test:auroc_median"] is None  # NaN -> null


def test_a_run_stopped_early_is_analysed_from_its_best_checkpoint(tmp_path) -> None:
    import torch

    from ctplatform.config import load_config
    from ctplatform.demo.faithfulness import load_model
    from ctplatform.model.axialnet import build_model
    from ctplatform.train.state import TrainState, save_checkpoint

    cfg = load_config(overrides=["model.input_shape=[6,64,64]", "model.custom_conv_padding=1", "model.backbone_layers=3"])
    model, best = build_model(cfg), build_model(cfg)
    state = TrainState()
    state.next_epoch, state.best_epoch = 3, 1
    save_checkpoint(tmp_path, model, torch.optim.Adam(model.parameters()), best.state_dict(), state)
    loaded, _, source = load_model(f"ckpt:{tmp_path}", cfg)
    assert source == {"checkpoint": tmp_path.name, "epochs_done": 3, "best_epoch": 1}
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), best.state_dict().values()))
