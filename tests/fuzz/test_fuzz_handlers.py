"""Property: every Lambda handler, given a malformed input, ends in a return value or a named error (a
ControlPlaneError, whose class name is the error the state machines see) - never KeyError, TypeError,
AttributeError or a pydantic ValidationError.

The handlers run as in Lambda (Powertools decorators included) against a real moto server with the tables and
buckets the template creates and one run in TRAINING, so well-formed parts of an input get past the parsing
into the layer's logic. Connections leave only for 127.0.0.1 (a guard below), whatever URL an input holds.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_control.errors import ControlPlaneError
from tests.fuzz.strategies import (
    MODEL_APPROVED,
    NODE_HEALTH,
    S3_UPLOAD,
    WORKER_FAILED,
    broken,
    json_values,
    malformed_events,
)
from tests.operations.lambda_helpers import LambdaContext, load_function

RUN_ID = "tiny-0123456789"
ARTIFACT = "s3://moe-fuzz-models/models/tiny-0123456789/"
MODEL = {
    "version": 3,
    "artifact_uri": ARTIFACT,
    "model_package_arn": MODEL_APPROVED["detail"]["ModelPackageArn"],
}
ENDPOINT = {
    "endpoint_id": "moe-v3",
    "model_package_arn": MODEL["model_package_arn"],
    "artifact_uri": ARTIFACT,
}

# A valid input of each handler (what its state machine sends), the seed that `broken` breaks.
SEEDS = {
    "validate_dataset": [{"event": S3_UPLOAD, "run_id": RUN_ID}],
    "cluster": [{"action": "describe", "name": "moe-training"}, {"action": "scale", "name": "x", "count": 2}],
    "stage_data": [{"run_id": RUN_ID}],
    "launch_training": [
        {"run_id": RUN_ID, "task_token": "AAAAtoken"},
        {
            "run_id": RUN_ID,
            "action": "relaunch",
            "checkpoint": {"step": 10, "uri": "s3://moe-fuzz-checkpoints/c/10/"},
        },
    ],
    "find_checkpoint": [{"run_id": RUN_ID}],
    "classify_failure": [{"event": NODE_HEALTH}, {"event": WORKER_FAILED}],
    "evaluate_model": [
        {"run_id": RUN_ID, "result": {"final_loss": 2.5, "vocab_size": 512, "final_step": 30}}
    ],
    "register_model": [{"run_id": RUN_ID}],
    "record_failure": [{"run_id": RUN_ID, "error": {"Error": "States.HeartbeatTimeout", "Cause": "x"}}],
    "check_gates": [{"event": MODEL_APPROVED}],
    "plan_placement": [{"artifact_uri": ARTIFACT}],
    "deploy_model": [
        {"model": MODEL, "placement": {"placement_uri": ARTIFACT + "placement.json", "gpu_fraction": 0.5}}
    ],
    "smoke_test": [{"endpoint": ENDPOINT}],
    "shift_traffic": [
        {"action": "shift", "model": MODEL, "endpoint": ENDPOINT},
        {"action": "rollback", "endpoint": ENDPOINT, "error": {"Error": "SmokeTestFailed", "Cause": "x"}},
    ],
}
HANDLERS = ["start_workflow", *SEEDS]
# Powertools warns on every invocation that adds no metric (a malformed input fails before it would).
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))  # more with FUZZ_EXAMPLES=N


@pytest.fixture(scope="module")
def configured(moto_server: str) -> Iterator[None]:
    """The environment template.yaml gives the functions, on moto; no compute backend that could start work."""
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_REGION": "us-east-1",
        "RUNS_TABLE": "moe-fuzz-runs",
        "DEPLOYMENTS_TABLE": "moe-fuzz-deployments",
        "IDEMPOTENCY_TABLE": "moe-fuzz-idempotency",
        "DATA_BUCKET": "moe-fuzz-data",
        "CHECKPOINT_BUCKET": "moe-fuzz-checkpoints",
        "MODEL_BUCKET": "moe-fuzz-models",
        "MODEL_PACKAGE_GROUP": "moe-fuzz-models",
        "CLUSTER_NAME": "moe-training",
        "COMPUTE_BACKEND": "hyperpod",
        "POWERTOOLS_SERVICE_NAME": "moe-control-plane",
        "POWERTOOLS_METRICS_NAMESPACE": "MoeOnAwsFuzz",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "CRITICAL",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    kw = {"endpoint_url": moto_server, "region_name": "us-east-1"}
    ddb, s3 = boto3.client("dynamodb", **kw), boto3.client("s3", **kw)
    for table, key in [
        ("moe-fuzz-runs", "run_id"),
        ("moe-fuzz-deployments", "slot"),
        ("moe-fuzz-idempotency", "id"),
    ]:
        ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    for bucket in ("moe-fuzz-data", "moe-fuzz-checkpoints", "moe-fuzz-models"):
        s3.create_bucket(Bucket=bucket)
    ddb.put_item(
        TableName="moe-fuzz-runs",
        Item={
            "run_id": {"S": RUN_ID},
            "dataset": {"S": "tiny"},
            "manifest_uri": {"S": "s3://moe-fuzz-data/datasets/tiny/manifest.json"},
            "status": {"S": "TRAINING"},
            "cluster": {"S": "moe-training"},
            "max_steps": {"N": "30"},
            "staged_uri": {"S": "/fsx/datasets/tiny"},
            "training": {"M": {"preset": {"S": "tiny"}, "max_steps": {"N": "30"}}},
        },
    )
    from moe_control.observability import metrics

    metrics.namespace = metrics.namespace or env["POWERTOOLS_METRICS_NAMESPACE"]
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def loopback_only() -> Iterator[None]:
    """Inputs carry URLs: refuse any connection that is not to this machine (the refusal is an OSError, as a
    closed port would be)."""
    original = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")):
            raise ConnectionRefusedError(f"the fuzz tests connect to 127.0.0.1 only, not {host}")
        return original(self, address)

    socket.socket.connect = connect
    try:
        yield
    finally:
        socket.socket.connect = original


def _inputs(name: str) -> st.SearchStrategy:
    if name == "start_workflow":
        return malformed_events
    return json_values | st.sampled_from(SEEDS[name]).flatmap(broken)


@pytest.mark.parametrize("name", HANDLERS)
def test_handler_answers_malformed_input_with_a_value_or_a_named_error(name, configured, loopback_only):
    handler = load_function(name).lambda_handler

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_inputs(name))
    def run(event):
        try:
            handler(event, LambdaContext())
        except ControlPlaneError:
            pass

    run()
