"""promotion on the local cloud: rejected at the gates, and rolled back when the deployment fails
(the success branch - deploy, smoke test, shift traffic - runs in the demo test)."""

from __future__ import annotations

import uuid

import pytest

from tests.workflows.conftest import wait_named

pytestmark = pytest.mark.slow
MACHINE = "PromotionStateMachine"


def _package(cloud, metadata: dict[str, str], uri: str) -> str:
    sm = cloud.client("sagemaker")
    group = cloud.deployment.physical["ModelPackageGroup"].rsplit("/", 1)[-1]
    spec = {
        "Containers": [
            {
                "Image": "local",
                "ModelDataSource": {
                    "S3DataSource": {"S3Uri": uri, "S3DataType": "S3Prefix", "CompressionType": "None"}
                },
            }
        ],
        "SupportedContentTypes": ["application/json"],
        "SupportedResponseMIMETypes": ["application/json"],
    }
    return sm.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification=spec,
        ModelApprovalStatus="PendingManualApproval",
        CustomerMetadataProperties=metadata,
    )["ModelPackageArn"]


def _live(cloud) -> dict | None:
    table = cloud.deployment.physical["DeploymentsTable"]
    item = cloud.client("dynamodb").get_item(
        TableName=table, Key={"slot": {"S": "live"}}, ConsistentRead=True
    )
    return item.get("Item")


def _approve(cloud, arn: str) -> None:
    cloud.client("sagemaker").update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")


def test_a_model_without_metrics_is_rejected_at_the_gates(cloud, alerts):
    bucket = cloud.deployment.physical["ModelBucket"]
    arn = _package(
        cloud,
        {"run_id": "r-nometrics", "artifact_uri": f"s3://{bucket}/models/none/"},
        f"s3://{bucket}/models/none/",
    )
    _approve(cloud, arn)
    desc = wait_named(cloud, MACHINE, "promote-", timeout=60)
    assert desc["status"] == "FAILED" and desc["error"] == "PromotionRejected"
    assert "GateFailed" in desc["cause"] or "loss" in desc["cause"]
    alerts.wait_for("rejected")


def test_a_deployment_that_fails_is_rolled_back_and_alerted(cloud, alerts):
    bucket = cloud.deployment.physical["ModelBucket"]
    missing = f"s3://{bucket}/models/missing-{uuid.uuid4().hex[:6]}/"
    live_before = _live(cloud)
    arn = _package(cloud, {"run_id": "r-missing", "artifact_uri": missing, "metric.loss": "3.0"}, missing)
    _approve(cloud, arn)
    version = arn.rsplit("/", 1)[-1]
    desc = wait_named(
        cloud,
        MACHINE,
        f"promote-{cloud.deployment.physical['ModelPackageGroup'].rsplit('/', 1)[-1]}-{version}",
        timeout=240,
    )
    assert desc["status"] == "FAILED" and desc["error"] == "PromotionRolledBack", desc.get("cause")
    alerts.wait_for("rolled back")
    assert _live(cloud) == live_before  # rolled back: the live slot is as it was
