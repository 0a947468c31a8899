"""The events that start workflows, as pydantic models (Powertools' EventBridge envelope, typed details)."""

from __future__ import annotations

from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import (
    EventBridgeModel,
    S3EventNotificationEventBridgeModel,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moe_control.errors import MalformedEvent

NODE_HEALTH = "SageMaker HyperPod Cluster Node Health Event"
CLUSTER_STATE = "SageMaker HyperPod Cluster State Change"
MODEL_PACKAGE_STATE = "SageMaker Model Package State Change"
WORKER_FAILED = "Training Worker Failed"
WORKER_SOURCE = "moe.training"


class HealthSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    HealthStatus: str
    HealthStatusReason: str | None = None
    RepairAction: Literal["None", "Replace", "Reboot"] | None = None
    Recommendation: str | None = None


class NodeHealthDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    ClusterArn: str | None = None
    ClusterName: str
    InstanceId: str
    HealthSummary: HealthSummary


class NodeHealthEvent(EventBridgeModel):
    detail: NodeHealthDetail


class WorkerFailedDetail(BaseModel):
    """Sent by a worker (or its supervisor) that dies without reporting to its task token."""

    run_id: str
    exit_code: int | None = None
    error: str = "Training.Failed"
    cause: str = ""
    cluster: str | None = None
    instance_id: str | None = None


class WorkerFailedEvent(EventBridgeModel):
    detail: WorkerFailedDetail


class ModelPackageDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    ModelPackageGroupName: str
    ModelPackageVersion: int | None = None
    ModelPackageArn: str
    ModelApprovalStatus: Literal["Approved", "Rejected", "PendingManualApproval"]
    InferenceSpecification: dict[str, Any] | None = None


class ModelPackageStateEvent(EventBridgeModel):
    detail: ModelPackageDetail


class ScheduledEvent(EventBridgeModel):
    detail: dict[str, Any] = Field(default_factory=dict)


class ApiTrainingRequest(BaseModel):
    """POST /training-jobs and the pipeline input it starts."""

    model_config = ConfigDict(extra="forbid")

    dataset_uri: str = Field(pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+\.json$")


def parse_event(event: Any, model: type[BaseModel]) -> Any:
    """Parse into `model` or raise MalformedEvent naming the first problems (never a raw pydantic trace)."""
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise MalformedEvent(f"not a {model.__name__}: {problems}") from None


def s3_object(event: Any) -> tuple[str, str, str]:
    """(bucket, key, etag) of an S3 'Object Created' EventBridge event, or of an API request {dataset_uri}."""
    if isinstance(event, dict) and "dataset_uri" in event:
        req = parse_event({"dataset_uri": event["dataset_uri"]}, ApiTrainingRequest)
        bucket, _, key = req.dataset_uri[5:].partition("/")
        return bucket, key, str(event.get("etag", ""))
    upload = parse_event(event, S3EventNotificationEventBridgeModel)
    return upload.detail.bucket.name, upload.detail.object.key, upload.detail.object.etag or ""
