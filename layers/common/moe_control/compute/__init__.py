"""Compute backends: where the training and inference workers run, chosen by COMPUTE_BACKEND.

`hyperpod`: SageMaker HyperPod clusters (Slurm or EKS), FSx for Lustre staging, SageMaker real-time endpoints.
`local`: processes on this machine, with records under LOCALCLOUD_STATE_DIR (the embedded local cloud).
"""

from __future__ import annotations

import os

from moe_control.compute.base import (
    BackendConfigError,
    ClusterNotFound,
    ClusterNotReady,
    ClusterState,
    ComputeBackend,
    Endpoint,
    InferenceDeployFailed,
    JobNotFound,
    JobStatus,
    LaunchedJob,
    NodeReplaceFailed,
    StagingFailed,
    StagingInProgress,
    TrainingAlreadyRunning,
    TrainingJob,
    TrainingLaunchFailed,
)

BACKENDS = ("hyperpod", "local")

__all__ = [
    "BACKENDS",
    "BackendConfigError",
    "ClusterNotFound",
    "ClusterNotReady",
    "ClusterState",
    "ComputeBackend",
    "Endpoint",
    "InferenceDeployFailed",
    "JobNotFound",
    "JobStatus",
    "LaunchedJob",
    "NodeReplaceFailed",
    "StagingFailed",
    "StagingInProgress",
    "TrainingAlreadyRunning",
    "TrainingJob",
    "TrainingLaunchFailed",
    "get_backend",
]


def get_backend(name: str | None = None) -> ComputeBackend:
    """The backend named by `name`, else by the COMPUTE_BACKEND environment variable."""
    choice = name or os.environ.get("COMPUTE_BACKEND", "")
    if choice == "hyperpod":
        from moe_control.compute.hyperpod import HyperPodBackend

        return HyperPodBackend()
    if choice == "local":
        from moe_control.compute.local import LocalBackend

        return LocalBackend()
    raise ValueError(
        f"unknown compute backend {choice!r} (COMPUTE_BACKEND): choose one of {', '.join(BACKENDS)}"
    )
