"""Cluster lifecycle: create (or reuse), describe, scale, replace a node, delete, and tear down idle clusters."""

from __future__ import annotations

from typing import Any

from moe_control.compute import ClusterNotReady, get_backend
from moe_control.errors import ClusterFailed, MalformedEvent
from moe_control.settings import env, env_int


def cluster_action(
    action: str,
    name: str | None = None,
    count: int | None = None,
    instance_id: str | None = None,
    wait: bool = True,
) -> dict[str, Any]:
    backend = get_backend()
    name = name or env("CLUSTER_NAME")
    if action == "ensure":
        state = backend.ensure_cluster(name)
    elif action == "describe":
        state = backend.describe_cluster(name)
    elif action == "scale":
        if count is None or count < 0:
            raise MalformedEvent("scale needs a count >= 0")
        state = backend.scale_cluster(name, count)
    elif action == "replace_node":
        if not instance_id:
            raise MalformedEvent("replace_node needs an instance_id")
        return {"cluster": name, "replacement": backend.replace_node(name, instance_id)}
    elif action == "delete":
        backend.delete_cluster(name)
        return {"cluster": name, "status": "Deleting"}
    elif action == "teardown_idle":
        idle = backend.list_idle_clusters(env_int("IDLE_CLUSTER_MINUTES", 60))
        for cluster in idle:
            backend.delete_cluster(cluster)
        return {"deleted": idle}
    else:
        raise MalformedEvent(
            f"unknown cluster action {action!r}: ensure, describe, scale, replace_node, delete, teardown_idle"
        )
    if state.status in ("Failed", "RollingBack"):
        raise ClusterFailed(f"cluster {name} is {state.status}")
    if wait and state.status != "InService":
        raise ClusterNotReady(f"cluster {name} is {state.status}")
    return {"cluster": name, "status": state.status, "orchestrator": state.orchestrator}
