"""train.use_gpu on a cluster: what the run asks for, not what happens to be up. A GPU worker group
at 0 replicas (KubeRay autoscaling) shows no GPU until something asks for one."""

from __future__ import annotations

import pytest

from ctplatform.config import load_config
from ctplatform.train.trainer import cluster_gpus, decide_use_gpu, resolve_use_gpu


def test_explicit_settings_are_what_the_run_asks_for():
    assert decide_use_gpu(True, gpus_now=0, gpus_declared=None) is True  # waits for GPU nodes
    assert decide_use_gpu(False, gpus_now=8, gpus_declared=8) is False


def test_auto_uses_gpus_that_are_up_or_declared_by_the_autoscaler():
    assert decide_use_gpu("auto", gpus_now=2, gpus_declared=None) is True
    assert decide_use_gpu("auto", gpus_now=0, gpus_declared=8) is True  # the GPU group at 0 replicas
    assert decide_use_gpu("auto", gpus_now=0, gpus_declared=0) is False  # a CPU-only autoscaling cluster
    assert decide_use_gpu("auto", gpus_now=0, gpus_declared=None) is False  # a fixed CPU cluster
    with pytest.raises(ValueError):
        decide_use_gpu("sometimes", 0, None)


def _publish_cluster_config(groups: list[dict]) -> None:
    """What an autoscaler (KubeRay's v2) publishes in the GCS: its node groups and their resources."""
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_put

    config = autoscaler_pb2.ClusterConfig()
    for g in groups:
        group = config.node_group_configs.add(name=g["name"], min_count=0, max_count=g["max"])
        group.resources.update(g["resources"])
    _internal_kv_put(GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(), overwrite=True,
                     namespace=GCS_AUTOSCALER_STATE_NAMESPACE)


def _remove_cluster_config() -> None:
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, namespace=GCS_AUTOSCALER_STATE_NAMESPACE)


def test_auto_reads_the_autoscalers_gpu_group_from_a_real_ray(ray_local):
    cfg = load_config(None, ["train.use_gpu=auto", "train.num_workers=2"])
    assert cluster_gpus() == (0.0, None)  # a local CPU Ray: no autoscaler
    assert resolve_use_gpu(cfg) is False
    try:
        _publish_cluster_config([
            {"name": "cpu", "max": 20, "resources": {"CPU": 16, "memory": 64 * 2**30}},
            {"name": "gpu", "max": 8, "resources": {"CPU": 8, "GPU": 1, "memory": 48 * 2**30}},
        ])
        assert cluster_gpus() == (0.0, 8.0)
        assert resolve_use_gpu(cfg) is True
        assert resolve_use_gpu(load_config(None, ["train.use_gpu=false"])) is False
        _publish_cluster_config([{"name": "cpu", "max": 20, "resources": {"CPU": 16}}])
        assert resolve_use_gpu(cfg) is False
    finally:
        _remove_cluster_config()


def test_a_sweep_plans_on_what_the_autoscaler_can_start():
    """The Tune RayJob's trouble: 4-GPU trials on a cluster that starts with 1 GPU of 8."""
    from ctplatform.train.tune.space import cluster_capacity, concurrent_trials

    cfg = load_config(None, ["train.num_workers=4", "train.cpus_per_worker=4"])
    now = {"CPU": 8.0, "GPU": 1.0, "memory": 48e9}
    with pytest.raises(ValueError):
        concurrent_trials(cfg, now, use_gpu=True)  # what is up now holds no trial
    declared = {"CPU": 64.0, "GPU": 8.0, "memory": 8 * 36e9}
    assert cluster_capacity(now, declared) == declared
    assert concurrent_trials(cfg, cluster_capacity(now, declared), use_gpu=True) == 2
    assert cluster_capacity(now, None) == now
