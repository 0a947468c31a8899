"""No secret or token is written to logs: the API key and Authorization header of API requests, the Step
Functions task token of a training run. Each test sends a unique marker through the real code path, at DEBUG
level, and looks for it in everything printed and logged (Powertools writes JSON lines to stdout)."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid

import boto3
import pytest

from tests.operations.lambda_helpers import LambdaContext, load_function


@pytest.fixture
def debug_logs(monkeypatch) -> io.StringIO:
    """What the control plane's Powertools Logger writes (its JSON lines), at DEBUG."""
    from moe_control.observability import logger, metrics

    metrics.namespace = metrics.namespace or "MoeOnAwsTest"
    level = logger.log_level
    logger.setLevel("DEBUG")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    stream = io.StringIO()
    previous = logger.registered_handler.setStream(stream)
    yield stream
    logger.registered_handler.setStream(previous)
    logger.setLevel(level)


def _proxy_event(method: str, path: str, body: dict | None, secret: str) -> dict:
    headers = {"x-api-key": secret, "Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "stage": "v1",
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/v1{path}",
            "identity": {"sourceIp": "127.0.0.1", "apiKey": secret, "apiKeyId": "abc123"},
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


def test_api_requests_never_log_the_api_key_or_the_authorization_header(
    debug_logs, s3_endpoint, monkeypatch, capfd, caplog
):
    caplog.set_level(logging.DEBUG)
    table = f"deployments-{uuid.uuid4().hex[:8]}"
    boto3.client("dynamodb", endpoint_url=s3_endpoint, region_name="us-east-1").create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "slot", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "slot", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    monkeypatch.setenv("DEPLOYMENTS_TABLE", table)
    api = load_function("api")
    secret = f"sk-{uuid.uuid4().hex}"
    completion = {"prompt": "def", "max_tokens": 4}
    answers = [
        # no live endpoint: 503, which the API logs (a warning with the reason)
        api.lambda_handler(_proxy_event("POST", "/v1/completions", completion, secret), LambdaContext()),
        api.lambda_handler(_proxy_event("POST", "/v1/completions", {"prompt": 5}, secret), LambdaContext()),
        api.lambda_handler(
            _proxy_event("POST", "/training-jobs", {"dataset_uri": "x"}, secret), LambdaContext()
        ),
        api.lambda_handler(_proxy_event("GET", "/no-such-route", None, secret), LambdaContext()),
    ]
    assert [a["statusCode"] for a in answers] == [503, 400, 400, 404]
    out = capfd.readouterr()
    logged = debug_logs.getvalue()
    assert '"no_live_endpoint"' in logged and '"correlation_id"' in logged  # the 503 was logged
    for text in (logged, out.out, out.err, caplog.text, json.dumps(answers)):
        assert secret not in text


def test_a_launch_never_logs_the_task_token(debug_logs, s3_endpoint, monkeypatch, capfd, caplog):
    """launch_training on moto with the token of a real-looking run: it fails (no cluster exists on moto) with a
    named error whose message, like every log line, leaves the token out."""
    caplog.set_level(logging.DEBUG)
    table = f"runs-{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb", endpoint_url=s3_endpoint, region_name="us-east-1")
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "run_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "run_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put_item(
        TableName=table,
        Item={
            "run_id": {"S": "tiny-1"},
            "dataset": {"S": "tiny"},
            "manifest_uri": {"S": "s3://data/datasets/tiny/manifest.json"},
            "status": {"S": "STAGED"},
            "cluster": {"S": "moe-training"},
            "staged_uri": {"S": "/fsx/datasets/tiny"},
            "max_steps": {"N": "30"},
        },
    )
    for k, v in {
        "RUNS_TABLE": table,
        "COMPUTE_BACKEND": "hyperpod",
        "CLUSTER_NAME": "moe-training",
        "CHECKPOINT_BUCKET": "ckpt",
        "MODEL_BUCKET": "models",
    }.items():
        monkeypatch.setenv(k, v)
    token = f"AAAA{uuid.uuid4().hex}{uuid.uuid4().hex}"
    from moe_control.errors import ControlPlaneError

    app = load_function("launch_training")
    try:
        result = app.lambda_handler({"run_id": "tiny-1", "task_token": token}, LambdaContext())
        message = json.dumps(result)
    except ControlPlaneError as exc:
        message = f"{type(exc).__name__}: {exc}"
    out = capfd.readouterr()
    logged = debug_logs.getvalue()
    # the failed step is logged with its traceback (Tracer): the named error, without the token
    assert "ClusterNotFound" in message and "ClusterNotFound" in caplog.text
    for text in (logged, out.out, out.err, caplog.text, message):
        assert token not in text


def test_the_training_worker_leaves_the_token_out_of_its_heartbeat_and_failure_logs(caplog):
    from moe_core.train.reporting import TaskReporter

    token = f"AAAA{uuid.uuid4().hex}"

    class EchoingStepFunctions:
        """Stands in for Step Functions answering with an error that quotes the token (no AWS here)."""

        def __init__(self):
            self.beat = threading.Event()

        def send_task_heartbeat(self, taskToken):
            self.beat.set()
            raise RuntimeError(f"InvalidToken: Invalid Token: '{taskToken}'")

        def send_task_failure(self, taskToken, error, cause):
            raise RuntimeError(f"TaskTimedOut: Task Timed Out: '{taskToken}'")

    caplog.set_level(logging.WARNING, logger="moe_core.train")
    client = EchoingStepFunctions()
    reporter = TaskReporter(token, heartbeat_seconds=0.01, client=client)
    reporter.start_heartbeats()
    assert client.beat.wait(5)
    reporter.failure("Training.Failed", "boom")
    assert "task heartbeat failed" in caplog.text and "could not report failure" in caplog.text
    assert "<task-token>" in caplog.text and token not in caplog.text


def test_the_template_logs_no_request_secrets_and_no_execution_data(template):
    api = template["Resources"]["ControlApi"]["Properties"]["AccessLogSetting"]["Format"]
    assert "apiKey" not in api and "header" not in api.lower() and "requestBody" not in api
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert "POWERTOOLS_LOGGER_LOG_EVENT" not in env  # the event (headers, task tokens) is never logged
    for lid, r in template["Resources"].items():
        logging_config = r.get("Properties", {}).get("Logging", {})
        assert not logging_config.get("IncludeExecutionData"), f"{lid} would log execution data (task tokens)"
