"""recovery on the local cloud: ignore, not recoverable, and an exhausted budget ending in an SNS alert
(the relaunch-from-checkpoint branch runs in the demo test)."""

from __future__ import annotations

import json
import uuid

import pytest

from localcloud.demo import get_run, node_health_event
from tests.workflows.conftest import put_run, wait_named

pytestmark = pytest.mark.slow
MACHINE = "RecoveryStateMachine"


def _worker_failed(run_id: str) -> dict:
    detail = {"run_id": run_id, "exit_code": 137, "error": "Training.Killed", "cause": "OOM killer"}
    return {"Source": "moe.training", "DetailType": "Training Worker Failed", "Detail": json.dumps(detail)}


def test_a_healthy_node_event_needs_nothing(cloud):
    event = node_health_event(f"c-{uuid.uuid4().hex[:6]}", "i-0healthy")
    detail = json.loads(event["Detail"])
    detail["HealthSummary"].update(HealthStatus="Healthy", RepairAction="None")
    event["Detail"] = json.dumps(detail)
    cloud.client("events").put_events(Entries=[event])
    desc = wait_named(cloud, MACHINE, f"node-{detail['ClusterName']}")
    assert desc["status"] == "SUCCEEDED"
    assert json.loads(desc["output"])["classification"]["action"] == "ignore"


def test_a_node_event_on_a_cluster_with_no_run_is_ignored(cloud):
    cluster = f"idle-{uuid.uuid4().hex[:6]}"
    cloud.client("events").put_events(Entries=[node_health_event(cluster, "i-0sick")])
    desc = wait_named(cloud, MACHINE, f"node-{cluster}")
    assert desc["status"] == "SUCCEEDED"
    assert "no run is training" in json.loads(desc["output"])["classification"]["reason"]


def test_a_failure_of_an_unknown_run_is_not_recoverable(cloud):
    cloud.client("events").put_events(Entries=[_worker_failed("no-such-run")])
    desc = wait_named(cloud, MACHINE, "worker-no-such-run")
    assert desc["status"] == "FAILED" and desc["error"] == "NotRecoverable"
    assert "no-such-run" in desc["cause"]


def test_an_exhausted_recovery_budget_ends_in_an_alert(cloud, alerts):
    run_id = put_run(cloud, attempts=99)
    cloud.client("events").put_events(Entries=[_worker_failed(run_id)])
    desc = wait_named(cloud, MACHINE, f"worker-{run_id}")
    assert desc["status"] == "FAILED" and desc["error"] == "RecoveryFailed"
    message = alerts.wait_for(f"worker-{run_id}")
    assert "RecoveryBudgetExhausted" in message
    assert get_run(cloud, run_id)["status"] == "FAILED"
