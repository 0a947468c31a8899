"""The model registry adapter against moto's SageMaker: register pending, read back, approve, reject."""

from __future__ import annotations

import pytest

from moe_control import registry

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/moe-inference:1"


@pytest.fixture
def group(aws: None, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MODEL_PACKAGE_GROUP", "moe-test-models")
    return "moe-test-models"


def test_register_model_creates_the_group_and_a_pending_version_with_metrics_and_artifact(group: str) -> None:
    arn = registry.register_model(
        "run-1", "s3://models/models/run-1", {"final_loss": 2.5, "tokens": 192}, IMAGE
    )

    model = registry.get_model(arn)
    assert model.group == group and model.version == 1
    assert model.approval_status == "PendingManualApproval"
    assert model.run_id == "run-1"
    assert model.artifact_uri == "s3://models/models/run-1/"
    assert model.metrics == {"final_loss": 2.5, "tokens": 192.0}
    assert model.image_uri == IMAGE

    from moe_control.aws import client

    desc = client("sagemaker").describe_model_package(ModelPackageName=arn)
    source = desc["InferenceSpecification"]["Containers"][0]["ModelDataSource"]["S3DataSource"]
    assert source == {
        "S3Uri": "s3://models/models/run-1/",
        "S3DataType": "S3Prefix",
        "CompressionType": "None",
    }
    assert desc["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"].endswith("/run-1/metrics_summary.json")


def test_get_model_accepts_group_slash_version_and_a_bare_version(group: str) -> None:
    registry.register_model("run-1", "s3://m/models/run-1/", {"loss": 3.0}, IMAGE)
    arn2 = registry.register_model("run-2", "s3://m/models/run-2/", {"loss": 2.0}, IMAGE)

    assert registry.get_model(f"{group}/2").arn == arn2
    assert registry.get_model("2").run_id == "run-2"
    with pytest.raises(registry.ModelPackageNotFound):
        registry.get_model(f"{group}/9")


def test_list_models_is_newest_first_and_filters_by_status(group: str) -> None:
    a = registry.register_model("run-1", "s3://m/models/run-1/", {"loss": 3.0}, IMAGE)
    registry.register_model("run-2", "s3://m/models/run-2/", {"loss": 2.0}, IMAGE)
    registry.approve(a, "gates passed")

    assert [m.run_id for m in registry.list_models()] == ["run-2", "run-1"]
    assert [m.run_id for m in registry.list_models("Approved")] == ["run-1"]
    assert [m.run_id for m in registry.list_models("PendingManualApproval")] == ["run-2"]


def test_approve_and_reject_update_the_status_with_the_reason(group: str) -> None:
    a = registry.register_model("run-1", "s3://m/models/run-1/", {"loss": 3.0}, IMAGE)
    b = registry.register_model("run-2", "s3://m/models/run-2/", {"loss": 9.0}, IMAGE)

    assert registry.approve(a).approval_status == "Approved"
    rejected = registry.reject(b, "loss worse than the deployed model")
    assert rejected.approval_status == "Rejected"
    assert rejected.approval_description == "loss worse than the deployed model"
    with pytest.raises(registry.ModelRegistrationRejected):
        registry.reject(b, "  ")


@pytest.mark.parametrize(
    ("artifact", "metrics", "why"),
    [
        ("/local/folder", {"loss": 1.0}, "s3://"),
        ("s3://m/models/r/", {"loss": float("nan")}, "finite"),
        ("s3://m/models/r/", {"loss!": 1.0}, "characters"),
        ("s3://m/models/r/", {f"m{i}": 1.0 for i in range(49)}, "at most"),
    ],
)
def test_register_model_refuses_bad_input_with_a_reason(
    group: str, artifact: str, metrics: dict, why: str
) -> None:
    with pytest.raises(registry.ModelRegistrationRejected, match=why):
        registry.register_model("r", artifact, metrics, IMAGE)


def test_unknown_arn_is_model_package_not_found(group: str) -> None:
    with pytest.raises(registry.ModelPackageNotFound):
        registry.approve("arn:aws:sagemaker:us-east-1:123456789012:model-package/moe-test-models/7")


def test_registry_without_group_setting_says_which_variable(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_PACKAGE_GROUP", raising=False)
    with pytest.raises(Exception, match="MODEL_PACKAGE_GROUP"):
        registry.list_models()
