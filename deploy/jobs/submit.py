"""Submit a ctplatform stage (or the whole pipeline) to a Ray cluster and wait for it.

    python deploy/jobs/submit.py --address http://127.0.0.1:8265 -- \
        ctplatform ingest --input /mnt/ctplatform/input/scans --store /mnt/ctplatform/store
    python deploy/jobs/submit.py --runtime-env deploy/jobs/runtime_env.local.yaml -- \
        python deploy/jobs/pipeline.py --input "$PWD/scans" --reports "$PWD/reports.csv" --workdir "$PWD/work"

The same as `ray job submit`, through the Job Submission API (ray.job_submission), with two
differences: a relative working_dir in the runtime_env file is taken relative to the repository,
not the current directory, and the exit status is the job's (0 only when it SUCCEEDED). With token
authentication on the cluster, export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> first.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RUNTIME_ENV = Path(__file__).resolve().parent / "runtime_env.yaml"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def load_runtime_env(path: str | Path, repo: Path = REPO) -> dict[str, Any]:
    """A runtime_env YAML file as a dict, with relative working_dir/py_modules paths resolved against
    the repository."""
    env = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(env, dict):
        raise ValueError(f"{path}: a runtime_env file must hold a mapping")
    wd = env.get("working_dir")
    if wd and "://" not in wd and not Path(wd).is_absolute():
        env["working_dir"] = str((repo / wd).resolve())
    if env.get("py_modules"):  # a built wheel, e.g. dist/ctplatform-0.1.0-py3-none-any.whl
        env["py_modules"] = [m if "://" in m or Path(m).is_absolute() else str((repo / m).resolve())
                             for m in env["py_modules"]]
    return env


def connect(address: str, token: str | None = None) -> Any:
    """A JobSubmissionClient; with `token`, every request carries it (clusters with token authentication).

    Without `token`, Ray itself adds RAY_AUTH_TOKEN when RAY_AUTH_MODE=token is exported.
    """
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def submit(client: Any, entrypoint: str, runtime_env: dict[str, Any], submission_id: str | None = None) -> str:
    """Submit one entrypoint; returns the job's submission id."""
    return client.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        submission_id=submission_id,
        metadata={"project": "ctplatform"},
    )


def wait_for_job(
    client: Any, job_id: str, timeout_s: float | None = None, poll_s: float = 2.0, echo: bool = True
) -> str:
    """Poll until the job ends, echoing its new log text; returns the final status name."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        if echo:
            logs = client.get_job_logs(job_id)
            if len(logs) > shown:
                sys.stdout.write(logs[shown:])
                sys.stdout.flush()
                shown = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS),
                        help=f"Ray dashboard address (default: $RAY_API_SERVER_ADDRESS or {DEFAULT_ADDRESS})")
    parser.add_argument("--runtime-env", default=str(DEFAULT_RUNTIME_ENV), metavar="FILE",
                        help="runtime_env YAML (default: deploy/jobs/runtime_env.yaml)")
    parser.add_argument("--submission-id", help="job id to use (default: generated)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds (the job goes on)")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command the job runs")
    args = parser.parse_args(argv)
    command = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not command:
        parser.error("give the command after --, e.g. -- ctplatform partition --store /mnt/ctplatform/store")

    client = connect(args.address)
    job_id = submit(client, shlex.join(command), load_runtime_env(args.runtime_env), args.submission_id)
    print(f"submitted {job_id} to {args.address}: {shlex.join(command)}", flush=True)
    if args.no_wait:
        return 0
    try:
        status = wait_for_job(client, job_id, args.timeout)
    except TimeoutError as e:
        print(f"{e}; follow it with: ray job logs --address {args.address} -f {job_id}", file=sys.stderr)
        return 1
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
