"""What each Ray pod of the manifests offers Ray, what each stage asks of it, and how many fit.

    python deploy/kuberay/sizing.py          # the table of docs/deploy.md, section 5

The one place the arithmetic lives: docs/deploy.md's sizing table is this module's output (a test
compares them), and tests/deploy/test_manifests.py checks every RayJob's asks, computed here from
the same configuration its entrypoint loads, against its own cluster spec.

A pod's memory is shared by Ray's object store (by default 30% of it, in /dev/shm) and the memory
tasks may ask for. KubeRay passes the container's memory limit to `ray start --memory` unless
rayStartParams says otherwise, so a pod without explicit `memory`/`object-store-memory` promises
its tasks the whole pod AND keeps 30% for the object store: the manifests set both, from
`ray_start_memory`.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: Ray's default object store share of a node's memory (ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION).
OBJECT_STORE_FRACTION = 0.3
#: Where the image keeps the configs (deploy/docker/Dockerfile); a RayJob's --config points there.
IMAGE_CONFIGS = "/opt/ctplatform/configs/"

_UNITS = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def quantity(q: Any) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores, or bytes)."""
    s = str(q)
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * _UNITS[suffix]
    return float(s)


def ray_start_memory(pod_memory_bytes: float, object_store_fraction: float = OBJECT_STORE_FRACTION) -> tuple[int, int]:
    """(`ray start --memory`, `--object-store-memory`) that split a pod's memory between tasks and
    the object store, in bytes: what the manifests' rayStartParams say."""
    object_store = int(pod_memory_bytes * object_store_fraction)
    return int(pod_memory_bytes) - object_store, object_store


@dataclass(frozen=True)
class PodResources:
    """What one Ray pod of a group offers Ray's scheduler, and the pod's own memory limit."""

    group: str
    CPU: float
    GPU: float
    memory: float  # Ray's logical memory resource, bytes
    object_store_memory: float
    pod_memory: float
    max_replicas: int

    def as_ray(self) -> dict[str, float]:
        return {"CPU": self.CPU, "GPU": self.GPU, "memory": self.memory}


def pod_resources(group: dict[str, Any], name: str) -> PodResources:
    """A head or worker group's pod, as KubeRay starts Ray in it (rayStartParams first, else the
    ray container's limits; KubeRay's --memory default is the memory limit)."""
    params = group.get("rayStartParams") or {}
    container = group["template"]["spec"]["containers"][0]
    limits = container.get("resources", {}).get("limits", {})
    pod_memory = quantity(limits["memory"])
    cpu = float(params.get("num-cpus", quantity(limits.get("cpu", 0))))
    gpu = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    memory = float(params.get("memory", pod_memory))
    object_store = float(params.get("object-store-memory", int(pod_memory * OBJECT_STORE_FRACTION)))
    replicas = 1 if name == "head" else int(group.get("maxReplicas", group.get("replicas", 1)))
    return PodResources(name, cpu, gpu, memory, object_store, pod_memory, replicas)


def cluster_pods(spec: dict[str, Any]) -> list[PodResources]:
    """Every group of a RayClusterSpec (the head first)."""
    pods = [pod_resources(spec["headGroupSpec"], "head")]
    pods += [pod_resources(g, g["groupName"]) for g in spec.get("workerGroupSpecs", [])]
    return pods


def cluster_max(pods: list[PodResources]) -> dict[str, float]:
    """What the cluster holds once the autoscaler has started every group's maxReplicas."""
    total = {"CPU": 0.0, "GPU": 0.0, "memory": 0.0}
    for p in pods:
        for k, v in p.as_ray().items():
            total[k] += v * p.max_replicas
    return total


def fits(ask: dict[str, float], offer: dict[str, float]) -> int:
    """How many copies of `ask` one node's `offer` holds (Ray places each task on one node)."""
    n = math.inf
    for k, v in ask.items():
        if v > 0:
            n = min(n, math.floor(offer.get(k, 0.0) / v + 1e-9))
    return 0 if n == math.inf else int(n)


# ------------------------------------------------------------------------------ the stages' asks
def task_ask(cpus: float, memory_gb: float, gpus: float = 0.0) -> dict[str, float]:
    """One Ray Data task of a stage (ingest, partition, evaluate ask `memory_gb * 1e9` bytes)."""
    return {"CPU": cpus, "GPU": gpus, "memory": memory_gb * 1e9}


def stage_asks(cfg: Any, stage: str, use_gpu: bool) -> dict[str, dict[str, float]]:
    """What a stage asks of one node, per unit that must fit on ONE node: a task, a Train worker, a
    Tune trial's driver bundle."""
    if stage == "ingest":
        return {"task": task_ask(cfg.ingest.cpus_per_task, cfg.ingest.memory_per_task_gb)}
    if stage == "partition":
        return {"task": task_ask(cfg.partition.cpus_per_task, cfg.partition.memory_per_task_gb)}
    if stage == "evaluate":
        return {"task": task_ask(cfg.eval.cpus_per_task, cfg.eval.memory_per_task_gb, cfg.eval.gpus_per_task)}
    worker = {"CPU": cfg.train.cpus_per_worker, "GPU": 1.0 if use_gpu else 0.0}
    if stage == "train":
        return {"train worker": worker}
    if stage == "tune":
        from ctplatform.train.tune.space import driver_bundle

        return {"train worker": worker, "trial driver": driver_bundle(cfg)}
    raise ValueError(f"unknown stage {stage!r}")


def entrypoint_config(entrypoint: str) -> tuple[str, Any]:
    """(stage, Config) of a RayJob entrypoint `ctplatform STAGE ... --config ... --set ...`, loaded
    exactly as the ctplatform command loads it (the image's config path mapped to configs/)."""
    from ctplatform.cli import build_parser, config_from_args

    argv = shlex.split(entrypoint)
    assert argv[0] == "ctplatform", entrypoint
    argv = [REPO / "configs" / a.removeprefix(IMAGE_CONFIGS) if a.startswith(IMAGE_CONFIGS) else a for a in argv[1:]]
    args = build_parser().parse_args([str(a) for a in argv])
    return args.command, config_from_args(args)


# ------------------------------------------------------------------------------ the docs' table
def sizing_table(manifest: Path = REPO / "deploy" / "kuberay" / "raycluster.yaml",
                 config: Path = REPO / "configs" / "radchestct.yaml") -> str:
    """Markdown: per worker group of the RayCluster, what a pod offers and how many of each stage's
    units fit in it (the configuration's asks)."""
    import yaml

    from ctplatform.config import load_config

    cfg = load_config(config)
    spec = yaml.safe_load(manifest.read_text())["spec"]
    rows = ["| pod (group) | CPU | GPU | pod memory | object store | Ray `memory` | ingest tasks "
            f"({cfg.ingest.cpus_per_task:g} CPU, {cfg.ingest.memory_per_task_gb:g} GB) | partition tasks "
            f"({cfg.partition.cpus_per_task:g} CPU, {cfg.partition.memory_per_task_gb:g} GB) | Train workers "
            f"({cfg.train.cpus_per_worker:g} CPU + 1 GPU) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    gib = 2**30
    for pod in cluster_pods(spec)[1:]:
        offer = pod.as_ray()
        ingest = fits(stage_asks(cfg, "ingest", False)["task"], offer)
        partition = fits(stage_asks(cfg, "partition", False)["task"], offer)
        train = fits(stage_asks(cfg, "train", True)["train worker"], offer) if pod.GPU else 0
        rows.append(
            f"| {pod.group} | {pod.CPU:g} | {pod.GPU:g} | {pod.pod_memory / gib:.0f} GiB | "
            f"{pod.object_store_memory / gib:.1f} GiB | {pod.memory / gib:.1f} GiB ({pod.memory / 1e9:.1f} GB) | "
            f"{ingest} | {partition} | {train} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(sizing_table())
