"""deploy/docker: the Dockerfiles parse with Docker's own parser, copy only what exists and is not
ignored, pin what pyproject pins, and put the ResNet-18 weights where the config expects them. The
Python each build step runs is run here too. (No Docker engine on these machines: nothing is built.)"""

from __future__ import annotations

import fnmatch
import os
import hashlib
import importlib.metadata
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
import torch
import yaml

from tests.conftest import REPO

DOCKER = REPO / "deploy" / "docker"
IMAGE_DOCKERFILE = DOCKER / "Dockerfile"
MLFLOW_DOCKERFILE = DOCKER / "mlflow.Dockerfile"
WEIGHTS = "/opt/ctplatform/weights/resnet18-f37072fd.pth"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "USER", "WORKDIR", "EXPOSE", "ENTRYPOINT", "CMD",
                "LABEL", "HEALTHCHECK", "SHELL", "VOLUME", "STOPSIGNAL", "ONBUILD"}


def _commands(path: Path) -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(path)))


def _pins() -> dict[str, str]:
    """constraints.txt: the exact versions the image installs."""
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return {ln.split("==")[0].lower(): ln.split("==")[1].strip() for ln in lines if "==" in ln and not ln.startswith("#")}


def _python_snippets(run: str) -> list[tuple[str, list[str]]]:
    """(code, argv) of every `python -c CODE ARGS...` in a RUN shell command."""
    words = shlex.split(run)
    out = []
    for i, w in enumerate(words):
        if w == "python" and words[i + 1 : i + 2] == ["-c"]:
            rest = []
            for a in words[i + 3 :]:
                if a in ("&&", ">", "||", ";"):
                    break
                rest.append(a)
            out.append((words[i + 2], rest))
    return out


def _ignored(pattern_file: Path, path: str) -> bool:
    patterns = [p.strip() for p in pattern_file.read_text().splitlines() if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(pre, pat) for pat in patterns for pre in prefixes)


@pytest.mark.parametrize("path", [IMAGE_DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_parses_with_known_instructions_and_ends_unprivileged(path):
    cmds = _commands(path)
    assert cmds and cmds[0].cmd == "FROM"
    assert {c.cmd for c in cmds} <= INSTRUCTIONS
    users = [c.value[0] for c in cmds if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_image_builds_on_the_ray_image_of_the_pinned_version():
    (base,) = [c.value[0] for c in _commands(IMAGE_DOCKERFILE) if c.cmd == "FROM"]
    ray = _pins()["ray"]
    assert ray == importlib.metadata.version("ray")
    assert base.startswith(f"rayproject/ray:{ray}-py311-cu")


def test_torch_cuda_build_matches_the_ray_images_cuda():
    """The image's CUDA (its -cuXYZ tag) is the CUDA the pinned torch is built for (the torch of
    constraints.txt, installed here); the build refuses a mismatch itself too."""
    import re

    (base,) = [c.value[0] for c in _commands(IMAGE_DOCKERFILE) if c.cmd == "FROM"]
    major, minor = re.fullmatch(r".*-cu(\d+)(\d)", base).groups()
    assert _pins()["torch"] == torch.__version__.split("+")[0]
    assert torch.version.cuda == f"{major}.{minor}", (base, torch.version.cuda)
    (run,) = [c.value[0] for c in _commands(IMAGE_DOCKERFILE) if c.cmd == "RUN" and "torch.version.cuda" in c.value[0]]
    ((code, _),) = _python_snippets(run)
    env = {**os.environ, "CUDA_VERSION": f"{major}.{minor}.1"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0
    env["CUDA_VERSION"] = "12.8.1"
    mismatch = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert mismatch.returncode != 0 and "built for CUDA" in mismatch.stderr


def test_copied_paths_exist_and_are_not_ignored():
    ignore = DOCKER / "Dockerfile.dockerignore"  # BuildKit's per-Dockerfile ignore file
    copies = [c for c in _commands(IMAGE_DOCKERFILE) if c.cmd in ("COPY", "ADD")]
    sources = [s for c in copies for s in c.value[:-1]]
    assert {"pyproject.toml", "README.md", "constraints.txt", "platform", "configs", "deploy/jobs"} <= set(sources)
    for src in sources:
        if src == "configs" and not (REPO / src).is_dir():
            pytest.skip("configs/ is not on main yet")
        assert (REPO / src).exists(), f"COPY {src}: no such path in the build context (the repository root)"
        assert not _ignored(ignore, src), f"COPY {src} is excluded by {ignore.name}"
    for heavy in (".venv", ".git", "ctplatform-work", "tests", "platform/__pycache__"):
        assert _ignored(ignore, heavy), heavy


def test_requirements_step_installs_pyprojects_dependencies_at_the_constraints(tmp_path):
    (run,) = [c.value[0] for c in _commands(IMAGE_DOCKERFILE) if c.cmd == "RUN" and "tomllib" in c.value[0]]
    ((code, _),) = _python_snippets(run)
    code = code.replace("/opt/ctplatform/src/pyproject.toml", str(REPO / "pyproject.toml"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert out.split() == project["dependencies"] + project["optional-dependencies"]["cluster"]
    assert "-c /opt/ctplatform/src/constraints.txt -r /tmp/requirements.txt" in run  # exact versions


def test_weights_go_where_the_config_expects_them_and_are_checked(tmp_path):
    cmds = _commands(IMAGE_DOCKERFILE)
    args = dict(c.value[0].split("=", 1) for c in cmds if c.cmd == "ARG")
    from torchvision.models import ResNet18_Weights

    assert args["WEIGHTS_URL"] == ResNet18_Weights.IMAGENET1K_V1.url
    assert Path(args["WEIGHTS_URL"]).name == Path(WEIGHTS).name
    assert Path(WEIGHTS).stem.split("-")[1] == args["WEIGHTS_SHA256_PREFIX"]
    (run,) = [c.value[0] for c in cmds if c.cmd == "RUN" and "torch.hub" in c.value[0]]
    ((code, argv),) = _python_snippets(run)
    assert argv == ["${WEIGHTS_URL}", WEIGHTS, "${WEIGHTS_SHA256_PREFIX}"]
    # The build step itself, on a local file: it copies a file whose hash matches and refuses one that does not.
    source = tmp_path / "weights.pth"
    torch.save({"w": torch.arange(3)}, source)
    good = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    dest = tmp_path / "out" / "resnet18.pth"
    dest.parent.mkdir()
    ok = subprocess.run([sys.executable, "-c", code, source.as_uri(), str(dest), good], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert dest.read_bytes() == source.read_bytes()
    bad_dest = tmp_path / "out" / "bad.pth"
    bad = subprocess.run([sys.executable, "-c", code, source.as_uri(), str(bad_dest), "00000000" if good != "00000000" else "11111111"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and not bad_dest.exists()
    config = REPO / "configs" / "radchestct.yaml"
    if not config.is_file():
        pytest.skip("configs/radchestct.yaml is not on main yet: cannot compare model.pretrained_weights")
    assert str(yaml.safe_load(config.read_text())["model"]["pretrained_weights"]) == WEIGHTS


def test_package_install_step_imports_the_package():
    (run,) = [c.value[0] for c in _commands(IMAGE_DOCKERFILE) if c.cmd == "RUN" and "--no-deps" in c.value[0]]
    ((code, _),) = _python_snippets(run)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mlflow_image_pins_the_packages_mlflow():
    (run,) = [c.value[0] for c in _commands(MLFLOW_DOCKERFILE) if c.cmd == "RUN"]
    pins = dict(w.split("==") for w in shlex.split(run) if "==" in w)
    assert pins["mlflow[auth]"] == _pins()["mlflow"]  # with the basic-auth app mlflow.yaml starts
    assert {"psycopg2-binary", "boto3"} <= pins.keys()  # PostgreSQL backend, s3 artifacts
