"""training_pipeline on the local cloud: its failure branches (the success branch runs in the demo test)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest

from localcloud.demo import execution, get_run, upload_stdlib_dataset, wait_for, worker_record
from tests.localcloud.conftest import upload_dataset, wait_for_execution_with_input
from tests.workflows.conftest import start

pytestmark = pytest.mark.slow
MACHINE = "TrainingPipelineStateMachine"


def test_a_malformed_start_event_fails_with_a_named_error(cloud):
    arn = start(cloud, MACHINE, {"hello": "world"}, name=f"bad-{uuid.uuid4().hex[:8]}")
    desc = cloud.wait_for_execution(arn, 30)
    assert desc["status"] == "FAILED" and desc["error"] == "MalformedEvent"
    assert "S3EventNotificationEventBridgeModel" in desc["cause"]


def test_a_failing_handler_fails_the_run_records_it_and_alerts(cloud, alerts):
    _, key = upload_dataset(cloud, corrupt=True)
    desc = wait_for_execution_with_input(cloud, MACHINE, key)
    assert desc["status"] == "FAILED" and desc["error"] == "DatasetRejected"
    assert "part-1.txt: size" in desc["cause"]
    alerts.wait_for(f"Training pipeline {desc['name']} failed: DatasetRejected")
    assert get_run(cloud, desc["name"]) is None  # rejected before a run existed: nothing half-recorded


def test_a_duplicate_event_gives_one_execution(cloud):
    _, key = upload_dataset(cloud, corrupt=True)
    first = wait_for_execution_with_input(cloud, MACHINE, key)
    event = json.loads(first["input"])
    lam = cloud.client("lambda")
    # EventBridge delivers at least once: the same event twice more, straight to the router
    answers = [
        json.loads(
            lam.invoke(FunctionName="moe-local-start-workflow", Payload=json.dumps(event))["Payload"].read()
        )
        for _ in range(2)
    ]
    assert all(a["duplicate"] and not a["started"] for a in answers), answers
    # and the same object uploaded again (same ETag) is the same run
    s3 = cloud.client("s3")
    bucket = cloud.deployment.physical["DataBucket"]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    time.sleep(1.5)
    names = [e["name"] for e in cloud.executions(MACHINE)]
    assert names.count(first["name"]) == 1


def test_an_undertrained_model_fails_the_evaluation_gate(cloud, alerts):
    name = f"gate-{uuid.uuid4().hex[:6]}"
    training = {
        "preset": "tiny",
        "max_steps": 2,
        "checkpoint_every": 2,
        "seq_len": 32,
        "batch_size": 4,
        "vocab_size": 300,
        "seed": 0,
    }
    upload_stdlib_dataset(cloud, name, training, max_bytes=40_000)
    desc = wait_for("the pipeline to finish", "gate", lambda: _finished_with_prefix(cloud, name), 240)
    assert desc["status"] == "FAILED" and desc["error"] == "EvaluationFailed", desc.get("cause")
    assert get_run(cloud, desc["name"])["status"] == "FAILED"
    alerts.wait_for(f"Training pipeline {desc['name']} failed: EvaluationFailed")


def test_a_worker_that_stops_heartbeating_times_the_task_out(cloud):
    name = f"hb-{uuid.uuid4().hex[:6]}"
    training = {
        "preset": "tiny",
        "max_steps": 5000,
        "checkpoint_every": 1000,
        "seq_len": 32,
        "batch_size": 4,
        "vocab_size": 300,
        "seed": 0,
    }
    upload_stdlib_dataset(cloud, name, training, max_bytes=40_000)
    run_id = wait_for(
        "the run",
        "hb",
        lambda: (e := execution(cloud, MACHINE)) and e["name"].startswith(name) and e["name"],
        30,
    )
    wait_for("training", "hb", lambda: (get_run(cloud, run_id) or {}).get("status") == "TRAINING", 120)
    pid = worker_record(cloud, run_id)["pid"]
    os.killpg(pid, signal.SIGSTOP)  # alive but silent: no heartbeats, no result
    try:
        desc = wait_for("the heartbeat timeout", "hb", lambda: _finished_with_prefix(cloud, name), 120, 1.0)
        assert desc["status"] == "FAILED" and desc["error"] == "TrainingHeartbeatLost", desc.get("cause")
        assert get_run(cloud, run_id)["status"] == "FAILED"
    finally:
        os.killpg(pid, signal.SIGKILL)


def _finished_with_prefix(cloud, prefix: str):
    for e in cloud.executions(MACHINE):
        if e["name"].startswith(prefix) and e["status"] != "RUNNING":
            return cloud.client("stepfunctions").describe_execution(executionArn=e["executionArn"])
    return None
