"""MLflow run tags: the one list of their names, and the one way to find a run by them.

Every stage tags the runs it creates (`STAGE` = train | tune | evaluate | compare, and the tags
below); other stages, the demo and deploy/ find runs again by these tags. Tag values carry run
ids, split names, settings and statuses only: no patient data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: The user's choice of tracking server (Config.tracking_uri reads it after the config's own).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def set_tracking_uri(uri: str) -> None:
    """Point this process's MLflow at `uri`, leaving MLFLOW_TRACKING_URI as the user set it.

    mlflow.set_tracking_uri also copies the URI into MLFLOW_TRACKING_URI (for subprocesses). Read
    back as the user's choice, that copy made every later config in the process (another workdir)
    log to the first one's store, and to a deleted one once that workdir was removed.
    """
    import mlflow  # here: the CLI's parser imports this module and stays light

    before = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop(TRACKING_URI_ENV, None)
    else:
        os.environ[TRACKING_URI_ENV] = before


# MLflow's own
PARENT_RUN = "mlflow.parentRunId"

# every run
STAGE = "ctplatform.stage"
STATUS = "ctplatform.status"  # how training ended (completed, early_stopped, ...)
STOP_REASON = "ctplatform.stop_reason"  # a short reason a run stopped early or failed
RAY_RUN_NAME = "ctplatform.ray_run_name"  # the Ray Train run a training run belongs to

# evaluation and comparison runs
EVALUATED_RUN = "ctplatform.evaluated_run"
EVALUATION_PREFIX = "ctplatform.evaluation."  # + split, on a training run: its latest evaluation run
SPLIT = "ctplatform.split"
RUN_A, RUN_B = "ctplatform.run_a", "ctplatform.run_b"
EVAL_A, EVAL_B = "ctplatform.eval_a", "ctplatform.eval_b"

# sweeps (Ray Tune)
SWEEP = "ctplatform.sweep"
TRIAL_ID = "ctplatform.trial_id"
TRIAL_STATUS = "ctplatform.trial_status"
BEST_TRIAL = "ctplatform.best_trial"
BEST_RUN_ID = "ctplatform.best_run_id"
BEST_CHECKPOINT = "ctplatform.best_checkpoint"
BEST_CONFIG = "ctplatform.best_config"

# the demo's reuse keys
DEMO = "ctplatform.demo.command"  # the demo key, on every MLflow run the demo creates
DEMO_CONFIG_HASH = "ctplatform.demo.command.config_hash"  # on a finished training run
DEMO_EVAL_HASH = "ctplatform.demo.command.eval_hash"  # on an evaluation run


def find_run(experiment_id: str, tags: Mapping[str, str], *, finished: bool = True) -> str | None:
    """The latest run of the experiment carrying every tag in `tags` (FINISHED ones only when
    `finished`), or None. MLflow must already point at the tracking store (runtime.setup_mlflow)."""
    from mlflow import MlflowClient  # cli imports the stages' command modules: MLflow loads when used

    terms = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if finished:
        terms.append("attributes.status = 'FINISHED'")
    found = MlflowClient().search_runs(
        [experiment_id], filter_string=" and ".join(terms), order_by=["attributes.start_time DESC"], max_results=1
    )
    return found[0].info.run_id if found else None
