"""Training jobs on a HyperPod Slurm cluster, submitted through the Slurm REST API (slurmrestd) on the controller.

Why slurmrestd and not SSM: HyperPod nodes are reached through SSM only as Session Manager targets
(`sagemaker-cluster:<cluster-id>_<group>-<instance-id>`), and `ssm:SendCommand` accepts only `i-...`/`mi-...`
instance ids (its InstanceIds pattern), so Run Command cannot reach them; a Session Manager session needs the
session-manager-plugin's WebSocket protocol, which a Lambda function does not speak. slurmrestd is Slurm's own
HTTP API: the cluster's lifecycle script starts it on the controller with JWT authentication and refreshes a
token for the submitting user in SSM Parameter Store (docs/compute.md); the Lambda function, attached to the
cluster's VPC, reads the token and posts the job.

The job runs `srun --auto-resume=1` (HyperPod replaces a faulty node and re-runs the step) around the training
image's entrypoint (torchrun over the node's GPUs); auto-resume restores no state, the worker resumes from its
newest complete checkpoint by itself.
"""

from __future__ import annotations

import json
import shlex
import urllib.error
import urllib.request
from typing import Any

from moe_control.compute.base import JobStatus, TrainingJob, TrainingLaunchFailed

DEFAULT_API_VERSION = "v0.0.40"

# Slurm job states -> ours. PENDING/CONFIGURING/REQUEUED... are "not finished": RUNNING for the workflow.
_DONE = {"COMPLETED": "SUCCEEDED"}
_FAILED = {
    "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
}  # fmt: skip


def render_sbatch_script(
    job: TrainingJob,
    *,
    output: str,
    gpus_per_node: int,
    image: str | None,
    entrypoint: str = "/opt/moe/entrypoint.sh",
    container_mounts: str = "/fsx:/fsx",
) -> str:
    """The batch script: one task per node, each running the image's entrypoint (torchrun over its GPUs)."""
    args = " ".join(shlex.quote(a) for a in job.worker_args(output=output))
    container = (
        f"--container-image={shlex.quote(image)} --container-mounts={shlex.quote(container_mounts)} "
        if image
        else ""
    )
    return f"""#!/bin/bash
# moe-on-aws: training run {job.run_id}, submitted by the control plane through slurmrestd.
set -euo pipefail
export NNODES="$SLURM_JOB_NUM_NODES"
export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_PORT=29500
export RDZV_ID="moe-$SLURM_JOB_ID"
export NPROC_PER_NODE={gpus_per_node}
mkdir -p {shlex.quote(output)}
# --auto-resume=1: HyperPod replaces a node that fails its health checks and re-runs this step; the worker
# then resumes from its newest complete checkpoint.
srun --auto-resume=1 --kill-on-bad-exit=1 {container}\\
  bash -c 'NODE_RANK="$SLURM_NODEID" exec {entrypoint} "$@"' _ {args}
"""


def job_description(job: TrainingJob, *, nodes: int, output: str, partition: str | None) -> dict[str, Any]:
    """slurmrestd's job description (v0.0.40 field names); the environment is a list of NAME=VALUE."""
    desc: dict[str, Any] = {
        "name": f"moe-{job.run_id}",
        "nodes": str(nodes),
        "tasks_per_node": 1,
        "current_working_directory": output,
        "standard_output": f"{output}/slurm-%j.out",
        "standard_error": f"{output}/slurm-%j.err",
        "environment": ["PATH=/usr/local/bin:/usr/bin:/bin", f"MOE_RUN_ID={job.run_id}"],
    }
    if partition:
        desc["partition"] = partition
    return desc


def map_state(state: Any) -> JobStatus:
    """A Slurm job_state (a string, or a list of flags in v0.0.40+) as RUNNING/SUCCEEDED/FAILED."""
    states = state if isinstance(state, list) else [state]
    for s in states:
        if s in _DONE:
            return "SUCCEEDED"
        if s in _FAILED:
            return "FAILED"
    return "RUNNING"


class SlurmRestError(TrainingLaunchFailed):
    """slurmrestd answered with an error (HTTP status or a non-empty `errors` list)."""


class SlurmRestClient:
    """A minimal slurmrestd client (stdlib HTTP: the Lambda layer carries no HTTP library)."""

    def __init__(self, base_url: str, user: str, token: str, api_version: str = DEFAULT_API_VERSION):
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.token = token
        self.api_version = api_version

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        url = f"{self.base_url}/slurm/{self.api_version}/{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("X-SLURM-USER-NAME", self.user)
        req.add_header("X-SLURM-USER-TOKEN", self.token)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                payload = json.loads(e.read() or b"{}")
            except ValueError:
                payload = {}
            return e.code, payload
        except (urllib.error.URLError, OSError) as e:
            raise SlurmRestError(f"cannot reach slurmrestd at {self.base_url}: {e}") from None

    @staticmethod
    def _errors(payload: dict) -> str:
        return "; ".join(
            f"{e.get('error') or e.get('description') or e}" for e in payload.get("errors") or []
        )

    def submit(self, script: str, job: dict[str, Any]) -> str:
        status, payload = self._request("POST", "job/submit", {"script": script, "job": job})
        if status >= 400 or payload.get("errors"):
            raise SlurmRestError(f"slurmrestd refused the job (HTTP {status}): {self._errors(payload)}")
        job_id = payload.get("job_id")
        if job_id is None:
            raise SlurmRestError(f"slurmrestd answered without a job_id: {payload}")
        return str(job_id)

    def status(self, job_id: str) -> JobStatus:
        status, payload = self._request("GET", f"job/{job_id}")
        jobs = payload.get("jobs") or []
        if status == 404 or (not jobs and status < 500):
            return "NOT_FOUND"
        if status >= 400:
            raise SlurmRestError(f"slurmrestd: job {job_id} (HTTP {status}): {self._errors(payload)}")
        return map_state(jobs[0].get("job_state"))

    def cancel(self, job_id: str, signal: str = "SIGTERM") -> None:
        status, payload = self._request("DELETE", f"job/{job_id}?signal={signal}")
        if status >= 400 and status != 404:
            raise SlurmRestError(
                f"slurmrestd cannot signal job {job_id} (HTTP {status}): {self._errors(payload)}"
            )
