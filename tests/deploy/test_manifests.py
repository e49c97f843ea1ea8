"""deploy/kuberay: every manifest is valid against the Kubernetes and KubeRay schemas, a broken one is
rejected, and the manifests agree with each other and with the stages' settings."""

from __future__ import annotations

import copy
import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.kuberay.validate import (
    KUBERNETES_VERSION,
    load_documents,
    main as validate_main,
    manifest_files,
    validate_document,
    validate_file,
)
from tests.conftest import REPO

KUBERAY = REPO / "deploy" / "kuberay"
MANIFESTS = manifest_files(KUBERAY)
SHARED_MOUNT = "/mnt/ctplatform"
RADCHESTCT = REPO / "configs" / "radchestct.yaml"


def _docs(name: str) -> list[dict[str, Any]]:
    return load_documents(KUBERAY / name)


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for p in MANIFESTS for d in load_documents(p) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, RayClusterSpec) of the RayCluster and of every RayJob."""
    specs = []
    for p in MANIFESTS:
        for d in load_documents(p):
            if d["kind"] == "RayCluster":
                specs.append((p.name, d["spec"]))
            elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
                specs.append((p.name, d["spec"]["rayClusterSpec"]))
    return specs


def _groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def _quantity(q: Any) -> float:
    """A CPU or memory quantity as a number (cores, or bytes)."""
    s = str(q)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * units[suffix]
    return float(s)


def _stage_config():
    from ctplatform.config import load_config

    return load_config(RADCHESTCT if RADCHESTCT.is_file() else None)


def test_the_expected_manifests_exist():
    names = {p.name for p in MANIFESTS}
    for required in ("namespace.yaml", "storage.yaml", "raycluster.yaml", "mlflow.yaml", "kustomization.yaml",
                     "rayjob-ingest.yaml", "rayjob-partition.yaml", "rayjob-train.yaml", "rayjob-tune.yaml",
                     "rayjob-predict.yaml"):
        assert required in names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("k8s", [KUBERNETES_VERSION, "1.35"])
def test_manifest_is_valid(path: Path, k8s: str):
    assert validate_file(path, k8s) == []


def test_every_kind_is_checked_against_a_schema():
    kinds = {d["kind"] for p in MANIFESTS for d in load_documents(p)}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim", "Secret", "Namespace"} <= kinds
    # An unknown kind is an error, not a silent pass.
    assert validate_document({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}})


def _mutated(doc: dict[str, Any], change) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    change(d)
    return d


def _worker(d, i=0):
    return d["spec"]["workerGroupSpecs"][i]


def _container(group):
    return group["template"]["spec"]["containers"][0]


BROKEN_RAYCLUSTER = {
    "misspelled field": lambda d: d["spec"].__setitem__("enableInTreeAutoscalng", True),
    "auth mode not in the CRD enum": lambda d: d["spec"]["authOptions"].__setitem__("mode", "password"),
    "replicas as a string": lambda d: _worker(d).__setitem__("maxReplicas", "20"),
    "int32 overflow": lambda d: _worker(d).__setitem__("maxReplicas", 2**31),
    "missing groupName": lambda d: _worker(d).pop("groupName"),
    "missing headGroupSpec": lambda d: d["spec"].pop("headGroupSpec"),
    "unknown container field": lambda d: _container(_worker(d)).__setitem__("imagePullPolicyy", "Always"),
    "bad memory quantity": lambda d: _container(_worker(d))["resources"]["limits"].__setitem__("memory", "64GB"),
    "GPU request differs from limit": lambda d: _container(_worker(d, 1))["resources"]["limits"].__setitem__(
        "nvidia.com/gpu", 2
    ),
    "volume mount without a path": lambda d: _container(_worker(d))["volumeMounts"][0].pop("mountPath"),
}


@pytest.mark.parametrize("change", BROKEN_RAYCLUSTER.values(), ids=BROKEN_RAYCLUSTER.keys())
def test_a_broken_raycluster_is_rejected(change):
    doc = _one("RayCluster", "ctplatform")
    assert validate_document(doc) == []
    assert validate_document(_mutated(doc, change)) != []


def test_a_broken_rayjob_and_deployment_are_rejected():
    job = _one("RayJob", "ctplatform-ingest")
    assert validate_document(_mutated(job, lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True)))
    assert validate_document(_mutated(job, lambda d: d["spec"].__setitem__("ttlSecondsAfterFinished", "600")))
    deployment = _one("Deployment", "mlflow")
    assert validate_document(_mutated(deployment, lambda d: d["spec"].pop("selector")))
    assert validate_document(_mutated(deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0]
                                      ["ports"][0].__setitem__("containerPort", "5000")))


def test_a_broken_file_fails_the_command_line_check(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    doc = _mutated(_one("RayCluster", "ctplatform"), BROKEN_RAYCLUSTER["misspelled field"])
    bad.write_text(yaml.safe_dump(doc))
    assert validate_main([str(bad)]) == 1
    assert "enableInTreeAutoscalng" in capsys.readouterr().out
    assert validate_main([str(KUBERAY / "raycluster.yaml")]) == 0


def test_kustomization_covers_every_manifest_but_the_rayjobs():
    (kust,) = _docs("kustomization.yaml")
    listed = set(kust["resources"])
    others = {p.name for p in MANIFESTS} - {"kustomization.yaml"}
    assert listed == {n for n in others if not n.startswith("rayjob-")}
    assert kust["namespace"] == "ctplatform"
    assert {i["name"] for i in kust["images"]} == {"ctplatform", "ctplatform-mlflow"}


def test_every_ray_cluster_shares_image_storage_auth_and_mlflow():
    mlflow_svc = _one("Service", "mlflow")
    port = mlflow_svc["spec"]["ports"][0]["port"]
    tracking_uri = f"http://mlflow.ctplatform.svc.cluster.local:{port}"
    claim = _one("PersistentVolumeClaim", "ctplatform-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod mounts it at once
    ray_version = importlib.metadata.version("ray")
    specs = _ray_cluster_specs()
    assert len(specs) == 6  # the RayCluster and five RayJobs
    for where, spec in specs:
        assert spec["rayVersion"] == ray_version, where
        assert spec["authOptions"] == {"mode": "token"}, where
        assert spec["enableInTreeAutoscaling"] is True, where
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", where
        for group, g in _groups(spec):
            pod = g["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            for c in pod["containers"]:
                assert c["image"].split(":")[0] == "ctplatform", (where, group)
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                assert volumes[mounts[SHARED_MOUNT]]["persistentVolumeClaim"]["claimName"] == "ctplatform-data"
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert env["MLFLOW_TRACKING_URI"] == tracking_uri, (where, group)
                assert c["resources"]["requests"] == c["resources"]["limits"], (where, group)  # Guaranteed QoS
            if group != "head":
                assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (where, group)


def test_rayjobs_run_their_stage_on_the_shared_volume_and_clean_up():
    for stage in ("ingest", "partition", "train", "tune", "predict"):
        job = _one("RayJob", f"ctplatform-{stage}")["spec"]
        argv = job["entrypoint"].split()
        assert argv[:2] == ["ctplatform", stage]
        for flag in ("--store", "--input", "--workdir", "--out"):
            if flag in argv:
                assert argv[argv.index(flag) + 1].startswith(SHARED_MOUNT + "/"), (stage, flag)
        assert argv[argv.index("--config") + 1] == "/opt/ctplatform/configs/radchestct.yaml"
        assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
        env = yaml.safe_load(job["runtimeEnvYAML"])
        assert env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://mlflow.ctplatform.svc")
        gpu_groups = [g for _, g in _groups(job["rayClusterSpec"]) if "nvidia.com/gpu" in _container(g)["resources"]["limits"]]
        assert bool(gpu_groups) == (stage in ("train", "tune", "predict")), stage


def test_rayjob_entrypoints_parse_with_the_ctplatform_command():
    from ctplatform.cli import COMMANDS, build_parser

    registered = {name for name, _ in COMMANDS}
    parser = build_parser()
    checked = 0
    for stage in ("ingest", "partition", "train", "tune", "predict"):
        if stage not in registered:
            continue  # that stage's command is not on main yet
        argv = _one("RayJob", f"ctplatform-{stage}")["spec"]["entrypoint"].split()[1:]
        args = parser.parse_args(argv)
        assert args.command == stage
        checked += 1
    assert checked >= 1, "no stage command is registered in ctplatform.cli.COMMANDS"


def _cpu_worker(spec):
    return next(g for name, g in _groups(spec) if name == "cpu")


def _gpu_worker(spec):
    return next(g for name, g in _groups(spec) if name == "gpu")


def test_resource_requests_match_the_stages_settings():
    cfg = _stage_config()
    cluster = _one("RayCluster", "ctplatform")["spec"]
    cpu = _container(_cpu_worker(cluster))["resources"]["limits"]
    gpu_group = _gpu_worker(cluster)
    gpu = _container(gpu_group)["resources"]["limits"]
    # CPU group: as many ingest/partition tasks as CPUs, each with its memory request.
    for stage in (cfg.ingest, cfg.partition):
        tasks = _quantity(cpu["cpu"]) // stage.cpus_per_task
        assert tasks >= 1
        assert tasks * stage.memory_per_task_gb * 2**30 <= _quantity(cpu["memory"])
    # GPU group: one GPU per Ray Train worker, its CPUs for the worker and its DataLoader processes.
    gpus_per_pod = int(gpu["nvidia.com/gpu"])
    assert gpus_per_pod >= 1
    assert cfg.train.cpus_per_worker + cfg.train.loader_workers <= _quantity(gpu["cpu"])
    assert cfg.train.num_workers <= gpu_group["maxReplicas"] * gpus_per_pod
    assert cfg.tune.trial_gpus <= gpus_per_pod and cfg.tune.trial_cpus <= _quantity(gpu["cpu"])
    # The RayJobs size their groups like the long-running cluster.
    for stage, pick in (("ingest", _cpu_worker), ("partition", _cpu_worker), ("train", _gpu_worker), ("tune", _gpu_worker)):
        job = _one("RayJob", f"ctplatform-{stage}")["spec"]["rayClusterSpec"]
        ref = pick(cluster)
        assert _container(pick(job))["resources"] == _container(ref)["resources"], stage


def test_mlflow_server_has_a_database_an_artifact_store_and_allowed_hosts():
    deployment = _one("Deployment", "mlflow")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), True) for a in c["args"])
    assert args["backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    secret = _one("Secret", "mlflow-db")
    assert secret["stringData"]["backend-store-uri"].startswith("postgresql://")
    assert _one("Service", "postgres")["spec"]["ports"][0]["port"] == 5432
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert args["artifacts-destination"] in mounts and args["serve-artifacts"] is True
    hosts = args["allowed-hosts"].split(",")
    assert "mlflow.ctplatform.svc.cluster.local:5000" in hosts and "*" not in hosts
    svc = _one("Service", "mlflow")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
