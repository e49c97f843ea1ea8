"""A 1 KB file claiming 128 GiB is refused from its header, naming the claim, in well under 200 MB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.catalog import gzip_bomb, header_only_nifti

REPO = Path(__file__).resolve().parents[2]
LIMIT = 200 * 10**6


def _probe(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    out = subprocess.run(
        [sys.executable, "-m", "tests.faults.memory_probe", str(path)], capture_output=True, text=True, env=env,
        cwd=REPO, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["claim.nii", "claim.nii.gz"])
def test_1kb_file_claiming_128_gib_is_refused_in_little_memory(tmp_path, name) -> None:
    path = header_only_nifti(tmp_path / name, (4096, 4096, 4096))  # int16: 128 GiB
    assert path.stat().st_size <= 1024
    got = _probe(path)
    assert got["refused"] and "header claims 4096x4096x4096 int16 = 137 GB" in got["reason"]
    assert got["tracemalloc_peak_bytes"] < LIMIT and got["rss_increase_bytes"] < LIMIT


def test_gzip_bomb_is_refused_before_inflating(tmp_path) -> None:
    path = gzip_bomb(tmp_path / "bomb.nii.gz")  # ~0.5 MB inflating to 0.5 GB
    got = _probe(path)
    assert got["refused"] and "decompression bomb" in got["reason"]
    assert got["rss_increase_bytes"] < LIMIT
