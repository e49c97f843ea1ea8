"""What a sweep varies and what one trial needs: the search space, a trial's configuration, its
resource request and how many trials fit on the cluster at once (pure functions, no Ray needed).

A trial's parameters are the four the paper's Table 5 question turns on:
    {"lambda_mask": 0.333, "grid_variant": "area-dilated", "lr": 0.001, "seed": 0}
"""

from __future__ import annotations

import math
from typing import Any

from ctplatform.config import Config

#: The train-section fields a trial replaces, in the order they name a trial.
TRIAL_PARAMS: tuple[str, ...] = ("grid_variant", "lambda_mask", "lr", "seed")


def _values(cfg: Config) -> dict[str, list[Any]]:
    t = cfg.tune
    return {
        "grid_variant": list(t.variants),
        "lambda_mask": [float(x) for x in t.lambdas],
        "lr": [float(x) for x in (t.lrs or [cfg.train.lr])],
        "seed": [int(x) for x in (t.seeds or [cfg.train.seed])],
    }


def search_space(cfg: Config) -> dict[str, Any]:
    """Tune's param_space: grid_search over every list (grid) or a choice per trial (random).

    Random search draws lr log-uniformly from tune.lr_range when it is set.
    """
    from ray import tune

    values = _values(cfg)
    if cfg.tune.search == "grid":
        if cfg.tune.lr_range is not None:
            raise ValueError("tune.lr_range needs tune.search=random; a grid takes tune.lrs")
        return {k: tune.grid_search(v) for k, v in values.items()}
    space: dict[str, Any] = {k: tune.choice(v) for k, v in values.items()}
    if cfg.tune.lr_range is not None:
        low, high = cfg.tune.lr_range
        space["lr"] = tune.loguniform(low, high)
    return space


def n_trials(cfg: Config) -> int:
    """How many trials the sweep runs."""
    if cfg.tune.search == "random":
        return cfg.tune.num_samples
    return cfg.tune.num_samples * math.prod(len(v) for v in _values(cfg).values())


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The base configuration with the trial's parameters in its train section."""
    cfg = base.model_copy(deep=True)
    for key in TRIAL_PARAMS:
        if key in params:
            setattr(cfg.train, key, params[key])  # validate_assignment checks each value
    return cfg


def trial_label(params: dict[str, Any], varied: set[str] | None = None) -> str:
    """A short readable name: 'area-dilated-lambda0p333' (+ '-lr0p001', '-seed1' when those vary)."""
    parts = [str(params["grid_variant"]), "lambda" + f"{float(params['lambda_mask']):.3g}"]
    if varied is None or "lr" in varied:
        parts.append("lr" + f"{float(params['lr']):.2g}")
    if varied is None or "seed" in varied:
        parts.append(f"seed{int(params['seed'])}")
    return "-".join(parts).replace(".", "p")


def varied_params(cfg: Config) -> set[str]:
    """The trial parameters that take more than one value in this sweep."""
    varied = {k for k, v in _values(cfg).items() if len(v) > 1}
    if cfg.tune.search == "random" and cfg.tune.lr_range is not None:
        varied.add("lr")
    return varied


# ------------------------------------------------------------------------------ resources
def driver_bundle(cfg: Config) -> dict[str, float]:
    """The placement-group bundle of a trial's driver function (Ray resource names)."""
    t = cfg.tune
    bundle = {"CPU": t.trial_cpus, "GPU": t.trial_gpus, "memory": float(int(t.trial_memory_gb * 2**30))}
    return {k: v for k, v in bundle.items() if v > 0}


def workers_request(cfg: Config, use_gpu: bool) -> dict[str, float]:
    """What a trial's Ray Train workers request together (their own placement group)."""
    t = cfg.train
    request = {"CPU": t.num_workers * t.cpus_per_worker}
    if use_gpu:
        request["GPU"] = float(t.num_workers)
    return request


def trial_request(cfg: Config, use_gpu: bool) -> dict[str, float]:
    """Everything one running trial holds: its driver bundle plus its Train workers."""
    total = dict(workers_request(cfg, use_gpu))
    for k, v in driver_bundle(cfg).items():
        total[k] = total.get(k, 0.0) + v
    return total


def concurrent_trials(cfg: Config, cluster: dict[str, float], use_gpu: bool) -> int:
    """Trials that run at once: tune.max_concurrent_trials when set, else how many trial requests
    `cluster` holds (its GPUs, CPUs, memory; pass `cluster_capacity(...)` so an autoscaling
    cluster counts what it can grow to). Tune schedules only the
    drivers, so without this bound every driver would start and wait for Train workers that cannot
    be placed.

    Raises ValueError when the bound is computed and not even one trial fits (it would wait forever).
    """
    if cfg.tune.max_concurrent_trials is not None:
        return max(1, cfg.tune.max_concurrent_trials)
    need = trial_request(cfg, use_gpu)
    fits = math.inf
    for resource in ("GPU", "CPU", "memory"):
        if need.get(resource, 0) > 0:
            fits = min(fits, math.floor(cluster.get(resource, 0.0) / need[resource] + 1e-9))
    if fits < 1:
        have = {k: cluster.get(k, 0.0) for k in need}
        raise ValueError(
            f"one trial needs {describe_resources(need)} (driver {describe_resources(driver_bundle(cfg))} + "
            f"{cfg.train.num_workers} Train worker(s) x {cfg.train.cpus_per_worker:g} CPU{' + 1 GPU' if use_gpu else ''}) "
            "but the cluster has "
            f"{describe_resources(have)}: lower train.num_workers, train.cpus_per_worker or tune.trial_cpus "
            "(on an autoscaling cluster set tune.max_concurrent_trials to start anyway)"
        )
    return int(fits) if math.isfinite(fits) else 1


def cluster_capacity(now: dict[str, float], declared: dict[str, float] | None) -> dict[str, float]:
    """What the sweep may plan on: each resource at the larger of what is up now and what the
    autoscaler can start (its node groups at their maximum); a GPU group at 0 replicas counts."""
    capacity = dict(now)
    for k, v in (declared or {}).items():
        capacity[k] = max(capacity.get(k, 0.0), v)
    return capacity


def describe_resources(resources: dict[str, float]) -> str:
    """'0.5 GiB memory, 2 CPU' for a Ray resource dict."""
    out = []
    for k, v in resources.items():
        out.append(f"{v / 2**30:.2g} GiB memory" if k == "memory" else f"{v:g} {k}")
    return ", ".join(out) or "nothing"
