"""Packaging: ranges in pyproject.toml, exact pins in constraints.txt (used by make, CI and the
image), test-only libraries out of the runtime dependencies, and the package installable beside
MONAI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: Imported only by tests and benchmarks (reference implementations), never by platform/.
TEST_ONLY = {"sklearn": "scikit-learn", "skimage": "scikit-image", "SimpleITK": "SimpleITK"}


def _requirements(group: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    deps = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(d) for d in deps]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_runtime_dependencies_are_ranges_not_pins():
    for req in _requirements():
        assert req.specifier and not any(s.operator == "==" for s in req.specifier), req


def test_every_dependency_is_pinned_in_constraints_within_its_range():
    pins = _constraints()
    groups = [None, *PYPROJECT["project"]["optional-dependencies"]]
    for group in groups:
        for req in _requirements(group):
            name = canonicalize_name(req.name)
            assert name in pins, f"{req.name} ({group or 'runtime'}) has no pin in constraints.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")  # the builds on local disk


def test_make_ci_and_the_image_install_with_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -c constraints.txt -e '.[test,bench]'" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert "-c /opt/ctplatform/src/constraints.txt" in dockerfile
    assert "['optional-dependencies']['cluster']" in dockerfile


def _imported_modules(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_test_only_libraries_are_not_runtime_dependencies():
    runtime = {canonicalize_name(r.name) for r in _requirements()}
    used_by_platform = _imported_modules(REPO / "platform")
    for module, dist in TEST_ONLY.items():
        assert module not in used_by_platform, f"platform/ imports {module}: it must be a runtime dependency"
        assert canonicalize_name(dist) not in runtime, f"{dist} is used only by tests and benchmarks"
    assert "s3fs" in {canonicalize_name(r.name) for r in _requirements("cluster")}


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/monai/", timeout=10).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_package_resolves_beside_monai_in_a_fresh_venv(tmp_path):
    """pip's resolver, in a new venv, on pyproject's ranges (not constraints.txt): ctplatform and
    MONAI together. The machine's own pip constraints (torch <= 2.14.1 on local disk) apply."""
    if not _pypi_reachable():
        pytest.skip("no package index reachable for monai")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    report = tmp_path / "report.json"
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
         str(REPO), "monai"],
        capture_output=True, text=True, timeout=1400,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    chosen = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    assert "monai" in chosen and "ctplatform" in chosen
    for req in _requirements():
        assert req.specifier.contains(chosen[canonicalize_name(req.name)], prereleases=True), req
