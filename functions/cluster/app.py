"""Cluster lifecycle: ensure (create or reuse), describe, scale, replace a node, delete, tear down idle clusters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import lifecycle, runs
from moe_control.observability import workflow_step


class ClusterInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = "ensure"
    name: str | None = None
    count: int | None = None
    instance_id: str | None = None
    run_id: str | None = None
    wait: bool = True


@workflow_step(ClusterInput)
def cluster(p: ClusterInput) -> Any:
    result = lifecycle.cluster_action(p.action, p.name, p.count, p.instance_id, p.wait)
    if p.run_id and p.action == "ensure":
        runs.update_run(p.run_id, cluster=result["cluster"])
    if p.run_id and p.action == "replace_node":
        runs.update_run(p.run_id, status="RECOVERING")
    return result


lambda_handler = cluster
