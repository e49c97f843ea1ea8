from __future__ import annotations

import pytest

from ctplatform.config import GRID_VARIANTS, load_config


def test_defaults_are_the_paper() -> None:
    cfg = load_config()
    assert cfg.model.geometry.name == "135x6x6"
    assert cfg.train.lambda_mask == pytest.approx(1 / 3)
    assert cfg.train.mask_loss == "published" and cfg.train.grid_variant == "nearest"
    assert cfg.ingest.spacing_mm == (0.8, 0.8, 0.8)
    assert len(GRID_VARIANTS) == 6


def test_yaml_and_overrides(tmp_path, monkeypatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("workdir: w\nmodel:\n  input_shape: [72, 168, 168]\n  custom_conv_padding: 1\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(f, ["train.lambda_mask=0", "ingest.spacing_mm=[2, 2, 2]"])
    assert cfg.model.geometry.name == "24x6x6"
    assert cfg.train.lambda_mask == 0 and cfg.ingest.spacing_mm == (2.0, 2.0, 2.0)
    assert cfg.store_path.endswith("w/store")
    assert cfg.tracking_uri.startswith("sqlite:///") and cfg.tracking_uri.endswith("w/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert cfg.tracking_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.grid_variant=bilinear", "unknown grid variant"),
        ("model.input_shape=[100, 420, 420]", "multiple of"),
        ("train.no_such_key=1", "Extra inputs"),
        ("ingest.chunk_slices=10", "multiple of 3"),
    ],
)
def test_bad_settings_are_clear_errors(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])
