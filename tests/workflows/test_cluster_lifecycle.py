"""cluster_lifecycle on the local cloud: ensure, health check, delete, the scheduled idle teardown, a bad action."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.workflows.conftest import start

pytestmark = pytest.mark.slow
MACHINE = "ClusterLifecycleStateMachine"


def _run(cloud, payload):
    return cloud.wait_for_execution(start(cloud, MACHINE, payload), 60)


def test_ensure_describe_delete(cloud):
    name = f"c-{uuid.uuid4().hex[:6]}"
    for action in ("ensure", "describe"):
        desc = _run(cloud, {"action": action, "name": name})
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        assert json.loads(desc["output"])["result"]["result"]["status"] == "InService"
    desc = _run(cloud, {"action": "delete", "name": name})
    assert desc["status"] == "SUCCEEDED"
    desc = _run(cloud, {"action": "describe", "name": name})
    assert desc["status"] == "FAILED" and desc["error"] == "ClusterOperationFailed"


def test_the_scheduled_teardown_runs_with_no_input(cloud):
    desc = _run(cloud, {})
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert "deleted" in json.loads(desc["output"])["result"]["result"]


def test_an_unknown_action_fails_with_a_named_error(cloud):
    desc = _run(cloud, {"action": "explode"})
    assert desc["status"] == "FAILED" and desc["error"] == "UnknownAction"
