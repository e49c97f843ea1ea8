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
from deploy.kuberay import sizing
from tests.conftest import REPO

KUBERAY = REPO / "deploy" / "kuberay"
MANIFESTS = manifest_files(KUBERAY)
SHARED_MOUNT = "/mnt/ctplatform"
RADCHESTCT = REPO / "configs" / "radchestct.yaml"


def _docs(name: str) -> list[dict[str, Any]]:
    return load_documents(KUBERAY / name)


def _rel(p: Path) -> str:
    return str(p.relative_to(KUBERAY))


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
                specs.append((_rel(p), d["spec"]))
            elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
                specs.append((_rel(p), d["spec"]["rayClusterSpec"]))
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
    names = {_rel(p) for p in MANIFESTS}
    for required in ("namespace.yaml", "storage.yaml", "raycluster.yaml", "mlflow.yaml", "kustomization.yaml",
                     "redis.yaml", "networkpolicy.yaml", "images/kustomization.yaml",
                     *(f"jobs/{s}/{f}" for s in ("ingest", "partition", "train", "tune", "predict")
                       for f in ("rayjob.yaml", "kustomization.yaml"))):
        assert required in names


@pytest.mark.parametrize("path", MANIFESTS, ids=_rel)
@pytest.mark.parametrize("k8s", [KUBERNETES_VERSION, "1.35"])
def test_manifest_is_valid(path: Path, k8s: str):
    assert validate_file(path, k8s) == []


def test_every_kind_is_checked_against_a_schema():
    kinds = {d["kind"] for p in MANIFESTS for d in load_documents(p)}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim", "Namespace", "NetworkPolicy"} <= kinds
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


def test_kustomizations_cover_every_manifest_and_rewrite_every_image():
    """The cluster's kustomization applies every manifest but the RayJobs; each RayJob has its own;
    all take the images component, so kustomize rewrites every image (RayJobs' included)."""
    (kust,) = _docs("kustomization.yaml")
    top = {p.name for p in MANIFESTS if p.parent == KUBERAY} - {"kustomization.yaml"}
    assert set(kust["resources"]) == top
    assert kust["namespace"] == "ctplatform" and kust["components"] == ["images"]
    (images,) = _docs("images/kustomization.yaml")
    assert {i["name"] for i in images["images"]} == {"ctplatform", "ctplatform-mlflow"}
    for stage in ("ingest", "partition", "train", "tune"):
        (job_kust,) = _docs(f"jobs/{stage}/kustomization.yaml")
        assert job_kust["resources"] == ["rayjob.yaml"] and job_kust["namespace"] == "ctplatform"
        assert (KUBERAY / "jobs" / stage / job_kust["components"][0]).resolve() == KUBERAY / "images"
    used = {c["image"].split(":")[0] for p in MANIFESTS for d in load_documents(p) if d.get("kind") in
            ("RayCluster", "RayJob", "Deployment") for c in _all_containers(d)}
    assert used - {"postgres", "redis"} <= {i["name"] for i in images["images"]}


def _all_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    return [c for _, g in _groups(spec) for c in g["template"]["spec"]["containers"]]


def test_no_secret_is_committed_and_kubectl_apply_generates_them_from_the_users_files(tmp_path):
    """No Secret object (no placeholder password) in any manifest; the kustomization's
    secretGenerator reads make_secrets.py's files, which git ignores; those files hold random values."""
    import subprocess
    import sys

    assert not [p for p in MANIFESTS for d in load_documents(p) if d["kind"] == "Secret"]
    for p in MANIFESTS:
        assert "change-me" not in p.read_text(), p
    (kust,) = _docs("kustomization.yaml")
    files = [e for g in kust["secretGenerator"] for e in (g.get("envs") or []) + (g.get("files") or [])]
    assert files and all(f.startswith("secrets/") for f in files)
    ignored = subprocess.run(["git", "check-ignore", *files], cwd=KUBERAY, capture_output=True, text=True)
    if ignored.returncode not in (0, 1):
        pytest.skip("not a git checkout")
    assert sorted(ignored.stdout.split()) == sorted(files)
    out = tmp_path / "secrets"
    written = []
    for _ in range(2):
        run = subprocess.run([sys.executable, str(KUBERAY / "make_secrets.py"), "--out", str(out), "--force"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        written.append({f: (out / f).read_text() for f in ("mlflow-db.env", "redis.env", "basic_auth.ini")})
    assert written[0] != written[1]  # fresh random values each time
    assert subprocess.run([sys.executable, str(KUBERAY / "make_secrets.py"), "--out", str(out)]).returncode == 1
    env = dict(line.split("=", 1) for line in (out / "mlflow-db.env").read_text().split())
    assert env["backend-store-uri"] == f"postgresql://mlflow:{env['password']}@postgres:5432/mlflow"
    client = dict(line.split("=", 1) for line in (out / "mlflow-client.env").read_text().split())
    assert f"admin_password = {client['password']}" in (out / "basic_auth.ini").read_text()
    assert {Path(f).name for f in files} == {p.name for p in out.iterdir()}


def test_mlflow_requires_login_and_only_ray_pods_reach_it():
    c = _one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth"
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/mlflow-auth/basic_auth.ini"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/mlartifacts"]["subPath"] != mounts["/var/lib/mlflow-auth"]["subPath"]  # users never served
    for where, spec in _ray_cluster_specs():
        for group, g in _groups(spec):
            names = {e["name"]: e for e in _container(g)["env"]}
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert names[key]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-client", (where, group)
    policies = {d["metadata"]["name"]: d["spec"] for d in _docs("networkpolicy.yaml")}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    (rule,) = policies["mlflow"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ctplatform"}}}]
    assert policies["postgres"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    assert policies["redis"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}


def test_the_head_keeps_the_clusters_state_in_redis():
    spec = _one("RayCluster", "ctplatform")["spec"]
    ft = spec["gcsFaultToleranceOptions"]
    svc = _one("Service", "redis")
    assert ft["redisAddress"] == f"{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "password"}
    redis = _one("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass" in redis["args"] and "$(REDIS_PASSWORD)" in redis["args"]
    assert redis["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "password"}


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
    gpu = _container(_gpu_worker(cluster))["resources"]["limits"]
    # GPU group: one GPU per Ray Train worker, its CPUs for the worker and its DataLoader processes.
    assert int(gpu["nvidia.com/gpu"]) >= 1
    assert cfg.train.cpus_per_worker + cfg.train.loader_workers <= _quantity(gpu["cpu"])
    # The RayJobs size their groups like the long-running cluster.
    for stage, pick in (("ingest", _cpu_worker), ("partition", _cpu_worker), ("train", _gpu_worker), ("tune", _gpu_worker)):
        job = _one("RayJob", f"ctplatform-{stage}")["spec"]["rayClusterSpec"]
        ref = pick(cluster)
        assert _container(pick(job))["resources"] == _container(ref)["resources"], stage
        assert pick(job)["rayStartParams"] == ref["rayStartParams"], stage


@pytest.mark.parametrize("where_spec", _ray_cluster_specs(), ids=lambda w: w[0])
def test_ray_never_promises_more_memory_than_the_pod_has(where_spec):
    """Ray's `memory` resource plus its object store fit in the pod's memory limit (KubeRay's default
    --memory is the whole limit, with 30% more for the object store on top)."""
    where, spec = where_spec
    for pod in sizing.cluster_pods(spec):
        assert pod.memory + pod.object_store_memory <= pod.pod_memory, (where, pod.group)
        assert (pod.memory, pod.object_store_memory) == sizing.ray_start_memory(pod.pod_memory), (where, pod.group)


@pytest.mark.parametrize("stage", ["ingest", "partition", "train", "tune"])
def test_each_rayjobs_asks_fit_its_own_cluster(stage):
    """The asks are computed from the configuration the RayJob's entrypoint loads (as the ctplatform
    command loads it) with the stages' own arithmetic, against the RayJob's rayClusterSpec."""
    from ctplatform.train.trainer import decide_use_gpu
    from ctplatform.train.tune.space import concurrent_trials, trial_request

    job = _one("RayJob", f"ctplatform-{stage}")["spec"]
    command, cfg = sizing.entrypoint_config(job["entrypoint"])
    assert command == stage
    pods = sizing.cluster_pods(job["rayClusterSpec"])
    workers = [p for p in pods if p.group != "head"]
    capacity = sizing.cluster_max(pods)
    # what resolve_use_gpu decides on this cluster as it starts: nothing up, the groups declared
    use_gpu = decide_use_gpu(cfg.train.use_gpu, 0.0, capacity["GPU"], cfg.train.num_workers)
    asks = sizing.stage_asks(cfg, stage, use_gpu)
    for unit, ask in asks.items():
        homes = [p.group for p in pods if sizing.fits(ask, p.as_ray()) >= 1]
        assert homes, f"{stage}: one {unit} ({ask}) fits no pod of {[p.group for p in pods]}"
    if stage in ("ingest", "partition"):
        per_pod = max(sizing.fits(asks["task"], p.as_ray()) for p in workers)
        assert per_pod >= 1
    if stage in ("train", "tune"):
        assert use_gpu, f"{stage} would train on CPU on its GPU cluster"
        gpu_pods = [p for p in workers if p.GPU > 0]
        places = sum(sizing.fits(asks["train worker"], p.as_ray()) * p.max_replicas for p in gpu_pods)
        assert places >= cfg.train.num_workers, f"{stage}: {cfg.train.num_workers} workers, {places} places"
    if stage == "tune":
        n = concurrent_trials(cfg, capacity, use_gpu)  # raises when not one trial fits
        need = trial_request(cfg, use_gpu)
        assert all(n * v <= capacity.get(k, 0) for k, v in need.items()), (n, need, capacity)


def test_the_cpu_pod_holds_twelve_ingest_tasks_not_sixteen():
    """The issue's figure: 16 CPU / 64 GiB, 4 GB a task, 30% of the pod for the object store."""
    cfg = _stage_config()
    pod = sizing.pod_resources(_cpu_worker(_one("RayCluster", "ctplatform")["spec"]), "cpu")
    assert (pod.CPU, pod.pod_memory) == (16, 64 * 2**30) and cfg.ingest.memory_per_task_gb == 4
    assert sizing.fits(sizing.stage_asks(cfg, "ingest", False)["task"], pod.as_ray()) == 12


def test_the_sizing_table_in_the_docs_is_the_codes():
    assert sizing.sizing_table() in (REPO / "docs" / "deploy.md").read_text()


def test_mlflow_server_has_a_database_an_artifact_store_and_allowed_hosts():
    deployment = _one("Deployment", "mlflow")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), True) for a in c["args"])
    assert args["backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["key"] == "backend-store-uri"
    assert _one("Service", "postgres")["spec"]["ports"][0]["port"] == 5432
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert args["artifacts-destination"] in mounts and args["serve-artifacts"] is True
    hosts = args["allowed-hosts"].split(",")
    assert "mlflow.ctplatform.svc.cluster.local:5000" in hosts and "*" not in hosts
    svc = _one("Service", "mlflow")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
