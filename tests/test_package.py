"""The import package is `ctplatform`; the folder platform/ never shadows the standard library."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO

STDLIB_PLATFORM = str(Path(sysconfig.get_paths()["stdlib"]) / "platform.py")

RAY_PROBE = """
import json, sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
         runtime_env={"working_dir": sys.argv[1], "excludes": [".venv", ".git", "ctplatform-work"]})

@ray.remote
def probe():
    import os, platform
    import ctplatform.labels
    return {"system": platform.system(), "file": platform.__file__, "cwd": os.getcwd(),
            "has_folder": os.path.isdir("platform"), "labels": len(ctplatform.labels.all_labels())}

print(json.dumps(ray.get(probe.remote())))
"""


def test_stdlib_platform_from_repository_root() -> None:
    code = "import platform, ctplatform.labels; print(platform.system()); print(platform.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    system, path = out.stdout.split("\n")[:2]
    assert system == "Linux"
    assert path == STDLIB_PLATFORM


def test_stdlib_platform_inside_ray_task_with_repo_working_dir(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RAY_PROBE, str(REPO)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["system"] == "Linux"
    assert got["file"] == STDLIB_PLATFORM
    # the task ran in Ray's unpacked copy of the repository, where platform/ sits in the cwd
    assert got["cwd"] != str(REPO) and got["has_folder"]
    assert got["labels"] == 80
