"""The SageMaker Model Registry adapter: every trained model becomes a version of one model package group.

A version is registered PendingManualApproval with its artifact (the uncompressed S3 folder the training
worker uploaded, as `ModelDataSource`), the run id and its metrics (as CustomerMetadataProperties strings),
and the metrics file as ModelMetrics statistics. Approving it (here, the API, or the console) emits
`SageMaker Model Package State Change`, which starts the promotion workflow.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from moe_control.aws import client
from moe_control.errors import ControlPlaneError

ApprovalStatus = Literal["PendingManualApproval", "Approved", "Rejected"]
METRIC_PREFIX = "metric."
_METADATA_KEY = re.compile(r"^[\w.:/=+\-@ ]{1,128}$")
_MAX_METADATA = 50  # CustomerMetadataProperties holds at most 50 entries


class ModelPackageNotFound(ControlPlaneError):
    """No model package with that ARN (or group/version) in the registry."""


class ModelRegistrationRejected(ControlPlaneError):
    """The model cannot be registered as given (bad metric names or values, no artifact, too many metrics)."""


class ModelVersion(BaseModel):
    arn: str
    group: str
    version: int
    approval_status: str
    run_id: str | None = None
    artifact_uri: str | None = None
    image_uri: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    approval_description: str | None = None
    created_at: str | None = None


def group_name() -> str:
    name = os.environ.get("MODEL_PACKAGE_GROUP")
    if not name:
        raise ControlPlaneError("the model registry needs the environment variable MODEL_PACKAGE_GROUP")
    return name


def ensure_group(name: str | None = None) -> str:
    """Create the model package group if it does not exist yet; returns its name."""
    sm = client("sagemaker")
    name = name or group_name()
    try:
        sm.describe_model_package_group(ModelPackageGroupName=name)
    except sm.exceptions.ClientError as e:
        if e.response["Error"]["Code"] not in ("ValidationException", "ResourceNotFound"):
            raise
        sm.create_model_package_group(
            ModelPackageGroupName=name,
            ModelPackageGroupDescription="DeepSeek-V3-style MoE models trained by moe-on-aws",
        )
    return name


def _metadata(run_id: str, artifact_uri: str, metrics: dict[str, float]) -> dict[str, str]:
    if len(metrics) + 2 > _MAX_METADATA:
        raise ModelRegistrationRejected(
            f"at most {_MAX_METADATA - 2} metrics can be registered, got {len(metrics)}"
        )
    props = {"run_id": run_id, "artifact_uri": artifact_uri}
    for name, value in metrics.items():
        key = METRIC_PREFIX + name
        if not _METADATA_KEY.match(key):
            raise ModelRegistrationRejected(
                f"metric name {name!r} has characters the registry does not accept"
            )
        value = float(value)
        if not math.isfinite(value):
            raise ModelRegistrationRejected(f"metric {name} is {value}: only finite values are registered")
        props[key] = repr(value)
    return props


def register_model(
    run_id: str, artifact_uri: str, metrics: dict[str, float], image_uri: str, group: str | None = None
) -> str:
    """Register a trained model as a new version, PendingManualApproval; returns the model package ARN."""
    if not (artifact_uri or "").startswith("s3://"):  # None: the run was never evaluated
        raise ModelRegistrationRejected(f"the artifact must be an s3:// folder, got {artifact_uri!r}")
    folder = artifact_uri if artifact_uri.endswith("/") else artifact_uri + "/"
    group = ensure_group(group)
    answer = client("sagemaker").create_model_package(
        ModelPackageGroupName=group,
        ModelPackageDescription=f"training run {run_id}",
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={
            "Containers": [
                {
                    "Image": image_uri,
                    # The artifact is a folder, not a model.tar.gz: an uncompressed S3 prefix.
                    "ModelDataSource": {
                        "S3DataSource": {"S3Uri": folder, "S3DataType": "S3Prefix", "CompressionType": "None"}
                    },
                }
            ],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json", "text/event-stream"],
        },
        ModelMetrics={
            "ModelQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": folder + "metrics_summary.json"}
            }
        },
        CustomerMetadataProperties=_metadata(run_id, folder, metrics),
    )
    return answer["ModelPackageArn"]


def _resolve_arn(arn_or_group_version: str) -> str:
    """An ARN as is; `group/version` (or a bare version number, in the configured group) looked up."""
    if arn_or_group_version.startswith("arn:"):
        return arn_or_group_version
    group, _, version = arn_or_group_version.rpartition("/")
    group = group or group_name()
    if not version.isdigit():
        raise ModelPackageNotFound(f"not a model package ARN or GROUP/VERSION: {arn_or_group_version!r}")
    for summary in _summaries(group):
        if summary.get("ModelPackageVersion") == int(version):
            return summary["ModelPackageArn"]
    raise ModelPackageNotFound(f"no version {version} in model package group {group!r}")


def _summaries(group: str, status: str | None = None) -> list[dict[str, Any]]:
    sm = client("sagemaker")
    kwargs: dict[str, Any] = {"ModelPackageGroupName": group, "ModelPackageType": "Versioned"}
    if status:
        kwargs["ModelApprovalStatus"] = status
    out: list[dict[str, Any]] = []
    while True:
        try:
            page = sm.list_model_packages(**kwargs)
        except sm.exceptions.ClientError as e:
            if e.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
                return out
            raise
        out.extend(page.get("ModelPackageSummaryList", []))
        if not page.get("NextToken"):
            return out
        kwargs["NextToken"] = page["NextToken"]


def _version(desc: dict[str, Any]) -> ModelVersion:
    props = desc.get("CustomerMetadataProperties") or {}
    container = (desc.get("InferenceSpecification") or {}).get("Containers", [{}])[0]
    source = container.get("ModelDataSource", {}).get("S3DataSource", {}).get("S3Uri")
    created = desc.get("CreationTime")
    return ModelVersion(
        arn=desc["ModelPackageArn"],
        group=desc.get("ModelPackageGroupName", ""),
        version=int(desc.get("ModelPackageVersion") or desc["ModelPackageArn"].rsplit("/", 1)[-1]),
        approval_status=desc.get("ModelApprovalStatus", ""),
        run_id=props.get("run_id"),
        artifact_uri=props.get("artifact_uri") or source or container.get("ModelDataUrl"),
        image_uri=container.get("Image"),
        metrics={k[len(METRIC_PREFIX) :]: float(v) for k, v in props.items() if k.startswith(METRIC_PREFIX)},
        approval_description=desc.get("ApprovalDescription"),
        created_at=created.isoformat() if hasattr(created, "isoformat") else created,
    )


def get_model(arn_or_group_version: str) -> ModelVersion:
    sm = client("sagemaker")
    arn = _resolve_arn(arn_or_group_version)
    try:
        return _version(sm.describe_model_package(ModelPackageName=arn))
    except sm.exceptions.ClientError as e:
        if e.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            raise ModelPackageNotFound(f"no model package {arn_or_group_version!r}") from None
        raise


def list_models(status: ApprovalStatus | None = None, group: str | None = None) -> list[ModelVersion]:
    """Every version of the group (newest first), optionally only those with one approval status."""
    summaries = _summaries(group or group_name(), status)
    return sorted((get_model(s["ModelPackageArn"]) for s in summaries), key=lambda m: m.version, reverse=True)


def _set_status(arn_or_group_version: str, status: ApprovalStatus, description: str) -> ModelVersion:
    model = get_model(arn_or_group_version)  # a clear ModelPackageNotFound before the update
    sm = client("sagemaker")
    current = sm.describe_model_package(ModelPackageName=model.arn).get("CustomerMetadataProperties") or {}
    update: dict[str, Any] = {
        "ModelPackageArn": model.arn,
        "ModelApprovalStatus": status,
        "ApprovalDescription": description[:1024],
    }
    if current:
        # Sending the same properties back changes nothing in SageMaker; moto 5.2.5 would otherwise drop them.
        update["CustomerMetadataProperties"] = current
    sm.update_model_package(**update)
    return get_model(model.arn)


def approve(arn: str, description: str = "approved") -> ModelVersion:
    """Approve a version: SageMaker emits the state-change event that starts promotion."""
    return _set_status(arn, "Approved", description)


def reject(arn: str, reason: str) -> ModelVersion:
    if not reason.strip():
        raise ModelRegistrationRejected("a rejection needs a reason")
    return _set_status(arn, "Rejected", reason)
