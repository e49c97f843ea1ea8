"""The order of the stages: the one list the demo and deploy/jobs/pipeline.py follow.

Only the apps know this order (tests/test_architecture.py): a stage never calls the next one, and
the CLI lists its commands without implying an order.
"""

from __future__ import annotations

#: Every stage command (`ctplatform <stage>`), in the order a pipeline runs them.
ORDER: tuple[str, ...] = ("phantom", "ingest", "partition", "label-reports", "train", "tune", "evaluate", "compare")
#: What a pipeline over real scans runs by default (deploy/jobs/pipeline.py): no phantom, no sweep.
DEPLOY_DEFAULT: tuple[str, ...] = tuple(s for s in ORDER if s not in ("phantom", "tune", "compare"))
#: What such a pipeline may add on request.
DEPLOY_OPTIONAL: tuple[str, ...] = ("tune",)
