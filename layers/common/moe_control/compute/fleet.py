"""The AWS inference fleet: a SageMaker real-time endpoint serving the model artifact (an S3 folder).

A deployment is a new model + endpoint config; the first one creates the endpoint, later ones update it with a
blue/green canary (a slice of capacity first, then all) and automatic rollback when a CloudWatch alarm fires
during the bake time. The artifact is an uncompressed S3 prefix (`ModelDataSource`, CompressionType None), which
SageMaker copies to /opt/ml/model.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from moe_control.compute.base import Endpoint, InferenceDeployFailed, env, env_int, env_list

VARIANT = "AllTraffic"


def _resource_name(endpoint_name: str, model_uri: str) -> str:
    """A model / endpoint-config name unique per deployment, within SageMaker's 63 characters."""
    digest = hashlib.sha256(f"{model_uri}@{time.time_ns()}".encode()).hexdigest()[:10]
    return f"{endpoint_name[:52]}-{digest}"


def deployment_config(alarms: list[str], canary_percent: int, wait_s: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": canary_percent},
                "WaitIntervalInSeconds": wait_s,
            },
            "TerminationWaitInSeconds": wait_s,
            "MaximumExecutionTimeoutInSeconds": max(600, 4 * wait_s),
        }
    }
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in alarms]}
    return config


class SageMakerFleet:
    """Reads INFERENCE_IMAGE_URI, INFERENCE_EXECUTION_ROLE_ARN, INFERENCE_INSTANCE_TYPE,
    INFERENCE_INSTANCE_COUNT, INFERENCE_CANARY_PERCENT, INFERENCE_CANARY_WAIT_SECONDS, INFERENCE_ROLLBACK_ALARMS."""

    def __init__(self, sagemaker: Any):
        self.sm = sagemaker

    def _exists(self, endpoint_name: str) -> dict | None:
        try:
            return self.sm.describe_endpoint(EndpointName=endpoint_name)
        except self.sm.exceptions.ClientError as e:
            if e.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
                return None
            raise

    def deploy(self, model_uri: str, endpoint_name: str, placement_uri: str | None) -> Endpoint:
        name = _resource_name(endpoint_name, model_uri)
        environment = {"MOE_MODEL_DIR": "/opt/ml/model", "MOE_MODEL_URI": model_uri}
        if placement_uri:
            environment["MOE_EXPERT_PLACEMENT_URI"] = placement_uri
        try:
            self.sm.create_model(
                ModelName=name,
                ExecutionRoleArn=env("INFERENCE_EXECUTION_ROLE_ARN"),
                PrimaryContainer={
                    "Image": env("INFERENCE_IMAGE_URI"),
                    "ModelDataSource": {
                        "S3DataSource": {
                            "S3Uri": model_uri if model_uri.endswith("/") else model_uri + "/",
                            "S3DataType": "S3Prefix",
                            "CompressionType": "None",
                        }
                    },
                    "Environment": environment,
                },
                Tags=[{"Key": "moe-on-aws:endpoint", "Value": endpoint_name}],
            )
            self.sm.create_endpoint_config(
                EndpointConfigName=name,
                ProductionVariants=[
                    {
                        "VariantName": VARIANT,
                        "ModelName": name,
                        "InitialInstanceCount": env_int("INFERENCE_INSTANCE_COUNT", 1),
                        "InstanceType": env("INFERENCE_INSTANCE_TYPE", "ml.p5e.48xlarge"),
                    }
                ],
            )
            if self._exists(endpoint_name) is None:
                self.sm.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=name)
            else:
                self.sm.update_endpoint(
                    EndpointName=endpoint_name,
                    EndpointConfigName=name,
                    DeploymentConfig=deployment_config(
                        env_list("INFERENCE_ROLLBACK_ALARMS"),
                        env_int("INFERENCE_CANARY_PERCENT", 10),
                        env_int("INFERENCE_CANARY_WAIT_SECONDS", 300),
                    ),
                )
        except self.sm.exceptions.ClientError as e:
            raise InferenceDeployFailed(f"SageMaker refused the deployment of {model_uri}: {e}") from None
        return self.status(endpoint_name, model_uri=model_uri)

    def _model_uri(self, desc: dict) -> str:
        config = self.sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
        model = self.sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        container = model.get("PrimaryContainer", {})
        return container.get("ModelDataSource", {}).get("S3DataSource", {}).get("S3Uri") or container.get(
            "ModelDataUrl", ""
        )

    def status(self, endpoint_name: str, model_uri: str | None = None) -> Endpoint:
        desc = self._exists(endpoint_name)
        if desc is None:
            return Endpoint(
                endpoint_id=endpoint_name, model_uri=model_uri or "", variant="", status="NotFound"
            )
        return Endpoint(
            endpoint_id=endpoint_name,
            url=None,
            model_uri=model_uri or self._model_uri(desc),
            variant=VARIANT,
            status=desc["EndpointStatus"],
        )

    def stop(self, endpoint_name: str) -> None:
        if self._exists(endpoint_name) is not None:
            self.sm.delete_endpoint(EndpointName=endpoint_name)
