"""The platform on a real multi-node Ray cluster, and what happens when a node is lost.

A head and a second node run on this machine as separate `ray start` processes (own temp dirs,
ports and 2 CPUs each, joined by the head's address, token authentication), sharing one storage
path (this machine's disk stands in for the cluster's shared volume). Every stage goes through
`ray job submit` with deploy/jobs/runtime_env.local.yaml, on a tiny phantom cohort:

    ingest -> partition (second node SIGKILLed mid-way) -> label-reports
           -> train (DDP, 2 workers of 2 CPUs: one per node, gloo; second node SIGKILLed mid-way,
              a replacement node joins as an autoscaler would add one) -> evaluate

Checked from Ray's own state (task and actor records with their node ids) and the store: work ran
on both nodes; the partition job succeeds with the lost node's tasks retried by Ray Data; Ray Train
restores from the last checkpoint (at most the epoch in progress is lost); every item of the store
is present, verified and readable.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from deploy.jobs.submit import connect
from tests.conftest import REPO
from tests.deploy.raynodes import VENV_BIN, LocalCluster

pytestmark = [pytest.mark.multinode, pytest.mark.slow, pytest.mark.timeout(2400)]

RUNTIME_ENV = REPO / "deploy" / "jobs" / "runtime_env.local.yaml"
CONFIG = REPO / "configs" / "demo.yaml"
N_SCANS = 20
EPOCHS = 4
RUN_NAME = "multinode"
#: The demo configuration made tiny (as tests/demo), sized for two nodes of 2 CPUs.
SETTINGS = [
    "ingest.spacing_mm=[10,5.5,5.5]",
    "ingest.memory_per_task_gb=0.5",
    "partition.memory_per_task_gb=0.5",
    "partition.variants=[area]",
    "model.input_shape=[24,64,64]",
    "train.grid_variant=area",
    f"train.epochs={EPOCHS}",
    "train.num_workers=2",
    "train.cpus_per_worker=2",  # a node's 2 CPUs: the two ranks land on different nodes
    "train.batch_size=2",
    "train.max_failures=3",
    "eval.bootstrap=20",
    "eval.figure_scans=1",
    "eval.sanity_scans=2",
    "eval.scans_per_task=1",
    "eval.memory_per_task_gb=0.5",
]


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="ctpmn", dir="/tmp"))  # short: Ray's unix sockets live under it
    c = LocalCluster.create(root)
    try:
        c.start_head(num_cpus=2)
        c.add_node("node2", num_cpus=2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("mn") / "phantom"
    subprocess.run([str(VENV_BIN / "ctplatform"), "phantom", str(out), "--n", str(N_SCANS), "--size", "tiny",
                    "--workers", "1", "--confounder", "fat:great_vessel_atherosclerosis:0.9"],
                   check=True, capture_output=True, timeout=600)
    return out


class Jobs:
    """`ray job submit` against the cluster, the shared work folder, and the job records."""

    def __init__(self, cluster: LocalCluster, work: Path) -> None:
        self.cluster, self.work = cluster, work
        self.client = connect(cluster.dashboard, cluster.token)

    def args(self, stage: str, *extra: str) -> list[str]:
        sets = [a for s in SETTINGS for a in ("--set", s)]
        return ["ctplatform", stage, "--workdir", str(self.work), "--store", str(self.work / "store"),
                "--config", str(CONFIG), *sets, *extra]

    def submit(self, submission_id: str, entry: list[str]) -> None:
        cli = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--no-wait", "--address", self.cluster.dashboard,
             "--submission-id", submission_id, "--runtime-env", str(RUNTIME_ENV), "--", *entry],
            env=self.cluster.env, capture_output=True, text=True, timeout=300,
        )
        assert cli.returncode == 0, (cli.stdout + cli.stderr)[-3000:]

    def status(self, submission_id: str) -> str:
        return str(self.client.get_job_status(submission_id).value)

    def wait(self, submission_id: str, timeout_s: float = 900) -> str:
        deadline = time.monotonic() + timeout_s
        while (status := self.status(submission_id)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert time.monotonic() < deadline, f"{submission_id} still {status}"
            time.sleep(2)
        logs = self.client.get_job_logs(submission_id)
        assert status == "SUCCEEDED", f"{submission_id} {status}:\n{logs[-5000:]}"
        return logs

    def run(self, submission_id: str, entry: list[str], timeout_s: float = 900) -> str:
        self.submit(submission_id, entry)
        return self.wait(submission_id, timeout_s)

    def tasks(self, submission_id: str) -> list[dict]:
        job = self.cluster.job_id(submission_id)  # None until the job's driver has started
        return self.cluster.state("tasks", {"job_id": job}) if job else []

    def actors(self, submission_id: str, class_name: str) -> list[dict]:
        job = self.cluster.job_id(submission_id)
        return [a for a in self.cluster.state("actors", {"class_name": class_name}) if job and a.get("job_id") == job]


def _worker_nodes(tasks: list[dict]) -> set[str]:
    """Nodes that ran a task (the job's driver is not a task)."""
    return {t["node_id"] for t in tasks if t.get("type") == "NORMAL_TASK" and t.get("node_id")}


def _wait_until(predicate, timeout_s: float, what: str, poll_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def _registered_epochs(run_dir: Path) -> list[dict]:
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    return [r["metrics"] for r in snap["checkpoint_results"]]


def _partition_errors(store_root: Path) -> str:
    """The store's failed partition rows (phantom ids, no PHI): why a volume was not partitioned."""
    from ctplatform.store import Store

    table = Store(str(store_root)).read_table("partition")
    if table is None:
        return "no partition table"
    bad = table[table["status"] != "ok"]
    return "failed partition rows:\n" + "\n".join(f"{r.volume_id}: {r.error}" for r in bad.itertuples())


def _check_store(store_root: Path, listing: Path) -> None:
    """Every scan ingested and verified against its source hash, every array readable to its last
    chunk, organs and grid masks for every volume, partition and label rows for every volume."""
    import pandas as pd

    from ctplatform.config import load_config
    from ctplatform.store import Store

    cfg = load_config(CONFIG, SETTINGS)
    store = Store(str(store_root))
    expected = sorted(pd.read_csv(listing)["volume_id"].astype(str))
    manifest = store.read_table("manifest").set_index("volume_id")
    assert sorted(manifest.index) == expected
    assert (manifest["status"] == "ok").all(), manifest[manifest["status"] != "ok"]
    geometry = cfg.model.geometry
    for vid in expected:
        assert store.has_volume(vid, manifest.loc[vid, "sha256"]), vid
        volume = store.read_volume(vid)
        assert volume.size > 0 and volume.dtype.name == "int16"
        organs = store.read_organs(vid)
        assert organs.shape == volume.shape and organs.max() > 0, vid
        grid = store.read_grid(geometry.name, "area", vid)
        assert grid.shape == (3, *geometry.grid) and grid.any(), vid
    assert sorted(store.volume_ids()) == expected and sorted(store.organ_ids()) == expected
    partition = store.read_table("partition").drop_duplicates("volume_id", keep="last").set_index("volume_id")
    assert (partition.loc[expected, "status"] == "ok").all()
    labels = store.read_table("labels")
    assert set(labels["volume_id"].astype(str)) == set(expected)


def test_stages_run_across_two_nodes_and_survive_losing_one(cluster, cohort, tmp_path_factory):
    work = tmp_path_factory.mktemp("mnwork")
    jobs = Jobs(cluster, work)
    head, node2 = cluster.nodes[0], cluster.nodes[1]
    listing = cohort / "scans.csv"

    # ingest: both nodes take scans
    logs = jobs.run("mn-ingest", jobs.args("ingest", "--input", str(listing)))
    assert f"ingest: {N_SCANS} ingested" in logs
    assert _worker_nodes(jobs.tasks("mn-ingest")) == {head.node_id, node2.node_id}

    # partition: SIGKILL node2's raylet while it runs partition tasks, after some volumes finished
    jobs.submit("mn-partition", jobs.args("partition"))

    def node2_busy_and_some_done() -> bool:
        tasks = jobs.tasks("mn-partition") if jobs.status("mn-partition") == "RUNNING" else []
        running = [t for t in tasks if t.get("state") == "RUNNING" and t.get("node_id") == node2.node_id]
        finished = [t for t in tasks if t.get("state") == "FINISHED" and t.get("type") == "NORMAL_TASK"]
        return bool(running) and bool(finished)

    _wait_until(node2_busy_and_some_done, 600, "partition tasks running on node2 after the first finished")
    node2.kill_raylet()
    logs = jobs.wait("mn-partition")
    assert f"partition: {N_SCANS} ok, 0 failed" in logs, _partition_errors(work / "store")
    tasks = jobs.tasks("mn-partition")
    on_node2 = [t for t in tasks if t.get("node_id") == node2.node_id and t.get("type") == "NORMAL_TASK"]
    assert on_node2, "no partition task ran on node2"
    lost = [t for t in on_node2 if t.get("state") == "FAILED"]
    assert lost, f"no task was lost with node2: {[(t['name'], t['state']) for t in on_node2]}"
    retried = [t for t in tasks if t.get("attempt_number", 0) > 0 and t.get("state") == "FINISHED"]
    assert retried and all(t["node_id"] != node2.node_id for t in retried)
    _wait_until(lambda: node2.node_id not in {n["node_id"] for n in cluster.alive_nodes()}, 120, "node2 marked dead")

    # a replacement node joins (an autoscaler's new pod); SARLE labels
    node3 = cluster.add_node("node3", num_cpus=2)
    jobs.run("mn-labels", jobs.args("label-reports", "--reports", str(cohort / "reports.csv")))

    # train: 2 DDP ranks, one per node; SIGKILL node3's raylet after the first epoch's checkpoint
    jobs.submit("mn-train", jobs.args("train", "--run-name", RUN_NAME))
    run_dir = work / "ray_results" / RUN_NAME
    _wait_until(lambda: len(_registered_epochs(run_dir)) >= 1
                or jobs.status("mn-train") in ("SUCCEEDED", "FAILED", "STOPPED"), 900, "the first checkpoint")
    assert jobs.status("mn-train") == "RUNNING", "training ended before a node could be lost"
    first = jobs.actors("mn-train", "RayTrainWorker")
    assert {a["node_id"] for a in first if a["state"] == "ALIVE"} == {head.node_id, node3.node_id}
    done_at_kill = max(m["epoch"] for m in _registered_epochs(run_dir)) + 1
    node3.kill_raylet()
    time.sleep(5)
    node4 = cluster.add_node("node4", num_cpus=2)
    logs = jobs.wait("mn-train", timeout_s=1200)
    assert "training completed" in logs
    final = _registered_epochs(run_dir)
    assert max(m["epoch"] for m in final) == EPOCHS - 1
    restarted_at = max(m.get("attempt_start_epoch", 0) for m in final)
    assert 0 < restarted_at and done_at_kill - restarted_at <= 1, (done_at_kill, restarted_at)
    workers = jobs.actors("mn-train", "RayTrainWorker")
    assert {head.node_id, node3.node_id, node4.node_id} <= {a["node_id"] for a in workers}
    print(f"train: {done_at_kill} epoch(s) checkpointed when node3 died; resumed at epoch {restarted_at}")

    # evaluate the trained model (the run id comes from the train job's output)
    run_id = re.search(r"MLflow: .* run ([0-9a-f]{32})", logs).group(1)
    jobs.run("mn-eval", jobs.args("evaluate", "--run-id", run_id))

    _check_store(work / "store", listing)
