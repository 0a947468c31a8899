"""Which workflow an event starts, under which execution name: the routing and de-duplication of events.

EventBridge delivers at least once. Two guards keep a duplicate from starting a second run: the start is an
idempotent function on DynamoDB (Powertools idempotency, in functions/start_workflow), and each execution is
named after what it is about (the run id, the model package version, the node and event), so Step Functions
itself refuses a second execution of the same name.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from moe_control import events as ev
from moe_control.aws import client
from moe_control.errors import MalformedEvent, UnknownEvent
from moe_control.runs import run_id_for
from moe_control.settings import env


@dataclass(frozen=True)
class WorkflowStart:
    workflow: str  # training_pipeline | recovery | promotion | cluster_lifecycle
    name: str  # the execution name: the de-duplication key
    input: dict[str, Any]


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", text)
    if len(name) > 80:
        name = name[:69] + "-" + hashlib.sha256(text.encode()).hexdigest()[:10]
    return name


def route(event: dict[str, Any]) -> WorkflowStart:
    """The workflow an EventBridge event (or an API request) starts; raises UnknownEvent or MalformedEvent."""
    if not isinstance(event, dict):
        raise MalformedEvent("an event must be a JSON object")
    source, detail_type = event.get("source"), event.get("detail-type")
    if "dataset_uri" in event or (source == "aws.s3" and detail_type == "Object Created"):
        bucket, key, etag = ev.s3_object(event)
        dataset = key.rstrip("/").split("/")[-2] if key.count("/") >= 1 else key
        run_id = run_id_for(_safe_name(dataset.lower())[:63], bucket, key, etag)
        return WorkflowStart("training_pipeline", run_id, event)
    if source == "aws.sagemaker" and detail_type == ev.NODE_HEALTH:
        e = ev.parse_event(event, ev.NodeHealthEvent)
        d = e.detail
        return WorkflowStart("recovery", _safe_name(f"node-{d.ClusterName}-{d.InstanceId}-{e.id}"), event)
    if source == ev.WORKER_SOURCE and detail_type == ev.WORKER_FAILED:
        e = ev.parse_event(event, ev.WorkerFailedEvent)
        return WorkflowStart("recovery", _safe_name(f"worker-{e.detail.run_id}-{e.id}"), event)
    if source == "aws.sagemaker" and detail_type == ev.MODEL_PACKAGE_STATE:
        e = ev.parse_event(event, ev.ModelPackageStateEvent)
        if e.detail.ModelApprovalStatus != "Approved":
            raise UnknownEvent(f"model package {e.detail.ModelPackageArn} is {e.detail.ModelApprovalStatus}")
        version = e.detail.ModelPackageArn.rsplit("/", 1)[-1]
        return WorkflowStart(
            "promotion", _safe_name(f"promote-{e.detail.ModelPackageGroupName}-{version}"), event
        )
    if source == "aws.events" and detail_type == "Scheduled Event":
        e = ev.parse_event(event, ev.ScheduledEvent)
        return WorkflowStart(
            "cluster_lifecycle", _safe_name(f"scheduled-{e.id}"), {"action": "teardown_idle"}
        )
    raise UnknownEvent(f"no workflow for source={source!r} detail-type={detail_type!r}")


def state_machine_arn(workflow: str) -> str:
    return env(f"{workflow.upper()}_ARN")


def start(start: WorkflowStart) -> dict[str, Any]:
    """StartExecution named by the de-duplication key; an existing execution of that name is a duplicate."""
    sfn = client("stepfunctions")
    arn = state_machine_arn(start.workflow)
    execution_arn = arn.replace(":stateMachine:", ":execution:") + f":{start.name}"
    try:
        # StartExecution with the name and input of a RUNNING execution returns that one without an error:
        # look first, so a repeat is reported as one.
        sfn.describe_execution(executionArn=execution_arn)
        return {"workflow": start.workflow, "execution_arn": execution_arn, "duplicate": True}
    except sfn.exceptions.ExecutionDoesNotExist:
        pass
    try:
        execution = sfn.start_execution(stateMachineArn=arn, name=start.name, input=json.dumps(start.input))
        return {"workflow": start.workflow, "execution_arn": execution["executionArn"], "duplicate": False}
    except sfn.exceptions.ExecutionAlreadyExists:
        return {"workflow": start.workflow, "execution_arn": execution_arn, "duplicate": True}
