"""The compute backend interface: what the workflows ask of "the cluster", whichever one runs the workers.

Two implementations: `hyperpod` (SageMaker HyperPod clusters, FSx for Lustre staging, SageMaker real-time
endpoints) and `local` (processes on this machine, for the local cloud). Handlers only see this module's
models and the `ComputeBackend` protocol; `moe_control.compute.get_backend()` picks one by COMPUTE_BACKEND.
"""

from __future__ import annotations

import os
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from moe_control.errors import ControlPlaneError

JobStatus = Literal["RUNNING", "SUCCEEDED", "FAILED", "NOT_FOUND"]
Orchestrator = Literal["slurm", "eks"]


# ---------------------------------------------------------------- named errors (state machines match the names)
class BackendConfigError(ControlPlaneError):
    """A setting the backend needs (an environment variable) is missing or malformed."""


class ClusterNotFound(ControlPlaneError):
    """The named cluster does not exist."""


class ClusterNotReady(ControlPlaneError):
    """The cluster exists but is not InService (creating, updating, failed): work cannot be placed on it."""


class NodeReplaceFailed(ControlPlaneError):
    """BatchReplaceClusterNodes refused the node (unknown instance, wrong status, already being replaced)."""


class StagingFailed(ControlPlaneError):
    """The dataset could not be staged next to the cluster (S3 -> FSx for Lustre, or S3 -> local scratch)."""


class StagingInProgress(ControlPlaneError):
    """The dataset is still being imported into FSx for Lustre: retry the launch later (a Retry with backoff)."""


class TrainingLaunchFailed(ControlPlaneError):
    """The scheduler (Slurm, Kubernetes, or the local process launcher) did not accept the training job."""


class TrainingAlreadyRunning(ControlPlaneError):
    """A training job of the same run is still running: a second one would write the same checkpoints."""


class JobNotFound(ControlPlaneError):
    """No training job with that id."""


class InferenceDeployFailed(ControlPlaneError):
    """The inference worker did not become healthy (the previous deployment, if any, keeps serving)."""


# ---------------------------------------------------------------- models
class TrainingJob(BaseModel):
    """One launch of the training worker for a run (a relaunch after a failure is another TrainingJob)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    dataset_uri: str  # s3://bucket/datasets/NAME/manifest.json
    preset: str = "tiny"
    max_steps: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    seq_len: int = Field(ge=8)
    batch_size: int = Field(ge=1)
    vocab_size: int = Field(ge=260)
    seed: int = 0
    checkpoint_uri: str  # s3://CKPT_BUCKET/checkpoints/RUN_ID
    artifact_uri: str  # s3://MODEL_BUCKET/models/RUN_ID/
    task_token: str | None = None
    heartbeat_seconds: int = Field(default=30, ge=1)
    extra_args: list[str] = Field(default_factory=list)  # passed through to `moectl train` unchanged
    # Where stage_data() put the dataset (a local folder, or /fsx/... on the cluster); None = read dataset_uri.
    data_path: str | None = None
    # The cluster to run on; None = the CLUSTER_NAME environment variable.
    cluster_name: str | None = None

    @property
    def dataset_prefix(self) -> str:
        """The dataset's folder (what `moectl train --data` takes): the manifest URI without `manifest.json`."""
        uri = self.dataset_uri
        if uri.endswith("/manifest.json"):
            uri = uri[: -len("manifest.json")]
        return uri if uri.endswith("/") else uri + "/"

    def worker_args(self, output: str, data: str | None = None) -> list[str]:
        """The `moectl train` options of this job (the same on every backend; torchrun adds the processes)."""
        args = [
            "--data", data or self.data_path or self.dataset_prefix,
            "--output", output,
            "--run-id", self.run_id,
            "--preset", self.preset,
            "--max-steps", str(self.max_steps),
            "--checkpoint-every", str(self.checkpoint_every),
            "--seq-len", str(self.seq_len),
            "--batch-size", str(self.batch_size),
            "--vocab-size", str(self.vocab_size),
            "--seed", str(self.seed),
            "--checkpoint-uri", self.checkpoint_uri,
            "--artifact-uri", self.artifact_uri,
            "--heartbeat-seconds", str(self.heartbeat_seconds),
            "--no-progress",
        ]  # fmt: skip
        if self.task_token:
            args += ["--task-token", self.task_token]
        return args + list(self.extra_args)


class LaunchedJob(BaseModel):
    job_id: str
    backend: Literal["hyperpod", "local"]
    details: dict = Field(default_factory=dict)


class ClusterState(BaseModel):
    name: str
    arn: str | None = None
    # InService | Creating | Updating | Failed | Deleting | RollingBack | SystemUpdating | NotFound
    status: str
    instance_groups: list[dict] = Field(default_factory=list)
    orchestrator: Orchestrator = "slurm"


class Endpoint(BaseModel):
    endpoint_id: str
    url: str | None = None  # local: http://127.0.0.1:PORT; AWS: None (the SageMaker endpoint is endpoint_id)
    model_uri: str
    variant: str
    status: str  # InService | Creating | Updating | Failed | OutOfService | NotFound ...


# ---------------------------------------------------------------- the protocol
@runtime_checkable
class ComputeBackend(Protocol):
    name: str

    def ensure_cluster(self, name: str) -> ClusterState: ...
    def describe_cluster(self, name: str) -> ClusterState: ...
    def scale_cluster(self, name: str, count: int) -> ClusterState: ...
    def replace_node(self, name: str, instance_id: str) -> str: ...
    def delete_cluster(self, name: str) -> None: ...
    def list_idle_clusters(self, idle_minutes: int) -> list[str]: ...
    def stage_data(self, dataset_uri: str, run_id: str) -> str: ...
    def launch_training(self, job: TrainingJob) -> LaunchedJob: ...
    def job_status(self, job_id: str) -> JobStatus: ...
    def stop_training(self, job_id: str, signal: Literal["TERM", "KILL"] = "TERM") -> None: ...
    def deploy_inference(
        self, model_uri: str, endpoint_name: str, placement_uri: str | None = None
    ) -> Endpoint: ...
    def stop_inference(self, endpoint_id: str) -> None: ...
    def endpoint_status(self, endpoint_id: str) -> Endpoint: ...


# ---------------------------------------------------------------- settings helpers
def env(name: str, default: str | None = None) -> str:
    """A required setting: the variable, else `default`, else BackendConfigError naming it."""
    value = os.environ.get(name) or default
    if value is None:
        raise BackendConfigError(f"the compute backend needs the environment variable {name}")
    return value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BackendConfigError(f"{name} must be an integer, got {raw!r}") from None


def env_list(name: str) -> list[str]:
    """A comma-separated setting as a list (empty when unset)."""
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key
