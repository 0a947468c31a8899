"""Fixtures for running the real state machines on the local cloud (the `cloud` fixture deploys template.yaml)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest


@pytest.fixture(scope="package")
def alerts(cloud) -> Any:
    """An SQS queue subscribed to the alert topic: `alerts.wait_for(text)` returns the first alert containing it."""
    sqs, sns = cloud.client("sqs"), cloud.client("sns")
    url = sqs.create_queue(QueueName=f"alerts-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic = cloud.deployment.physical["AlertTopic"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)

    class Alerts:
        seen: list[str] = []

        def wait_for(self, text: str, timeout: float = 30) -> str:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                    "Messages", []
                ):
                    body = json.loads(m["Body"])
                    self.seen.append(body.get("Message", ""))
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                for message in self.seen:
                    if text in message:
                        return message
            raise TimeoutError(f"no alert containing {text!r}; seen: {self.seen[-5:]}")

    return Alerts()


def start(cloud, machine: str, payload: dict[str, Any], name: str | None = None) -> str:
    sfn = cloud.client("stepfunctions")
    kwargs = {"name": name} if name else {}
    return sfn.start_execution(
        stateMachineArn=cloud.deployment.physical[machine], input=json.dumps(payload), **kwargs
    )["executionArn"]


def wait_named(cloud, machine: str, prefix: str, timeout: float = 60) -> dict[str, Any]:
    """The first finished execution of `machine` whose name starts with `prefix`."""
    sfn = cloud.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in cloud.executions(machine):
            if e["name"].startswith(prefix) and e["status"] != "RUNNING":
                return sfn.describe_execution(executionArn=e["executionArn"])
        time.sleep(0.3)
    raise TimeoutError(f"no finished execution of {machine} named {prefix}* after {timeout} s")


def put_run(cloud, **fields: Any) -> str:
    """A run record written straight into the runs table (for workflows that start mid-way)."""
    from boto3.dynamodb.types import TypeSerializer

    run = {
        "run_id": f"run-{uuid.uuid4().hex[:8]}",
        "dataset": "t",
        "manifest_uri": "s3://nowhere/datasets/t/manifest.json",
        "status": "TRAINING",
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
        **fields,
    }
    item = {k: TypeSerializer().serialize(v) for k, v in run.items()}
    cloud.client("dynamodb").put_item(TableName=cloud.deployment.physical["RunsTable"], Item=item)
    return run["run_id"]
