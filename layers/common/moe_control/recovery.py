"""The recovery workflow's steps: classify a failure, replace the node, find the newest complete checkpoint,
relaunch the run from it (with the training pipeline's own task token, so the pipeline carries on)."""

from __future__ import annotations

from typing import Any

from moe_control import events as ev
from moe_control.aws import client
from moe_control.checkpoints import find_latest_complete_checkpoint_s3
from moe_control.compute import ClusterNotReady, JobNotFound, get_backend
from moe_control.errors import RecoveryBudgetExhausted
from moe_control.pipeline import training_job
from moe_control.runs import find_active_run, get_run, update_run
from moe_control.settings import env_int

HEALTHY = {"Healthy", "Schedulable"}


def classify(event: dict[str, Any]) -> dict[str, Any]:
    """What to do about a failure event: replace, reboot-and-wait, relaunch, or ignore (with the reason)."""
    if event.get("detail-type") == ev.NODE_HEALTH:
        e = ev.parse_event(event, ev.NodeHealthEvent)
        d = e.detail
        health = d.HealthSummary
        if health.HealthStatus in HEALTHY:
            return {"action": "ignore", "reason": f"node {d.InstanceId} is {health.HealthStatus}"}
        run = find_active_run(d.ClusterName)
        if run is None:
            return {"action": "ignore", "reason": f"no run is training on cluster {d.ClusterName}"}
        action = {"Replace": "replace", "Reboot": "reboot"}.get(health.RepairAction or "", "relaunch")
        return {
            "action": action,
            "run_id": run.run_id,
            "cluster": d.ClusterName,
            "instance_id": d.InstanceId,
            "reason": f"{health.HealthStatus}: {health.HealthStatusReason or 'no reason given'}",
        }
    e = ev.parse_event(event, ev.WorkerFailedEvent)
    run = get_run(e.detail.run_id)
    if run.status not in ("TRAINING", "RECOVERING"):
        return {"action": "ignore", "reason": f"run {run.run_id} is {run.status}"}
    return {
        "action": "relaunch",
        "run_id": run.run_id,
        "cluster": run.cluster,
        "instance_id": e.detail.instance_id,
        "reason": f"{e.detail.error}: {e.detail.cause}",
    }


def replace_node(run_id: str, cluster: str, instance_id: str) -> dict[str, Any]:
    update_run(run_id, status="RECOVERING")
    return {"replacement": get_backend().replace_node(cluster, instance_id)}


def wait_for_cluster(cluster: str) -> dict[str, Any]:
    state = get_backend().describe_cluster(cluster)
    if state.status != "InService":
        raise ClusterNotReady(f"cluster {cluster} is {state.status}")
    return {"cluster": cluster, "status": state.status}


def find_checkpoint(run_id: str) -> dict[str, Any]:
    run = get_run(run_id)
    if not run.checkpoint_uri:
        return {"step": None, "location": None, "skipped": []}
    return find_latest_complete_checkpoint_s3(client("s3"), run.checkpoint_uri).to_dict()


def relaunch(run_id: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Stop what is left of the old job and start it again; the worker resumes from the newest complete
    checkpoint by itself and reports to the pipeline's task token. A bounded number of relaunches per run."""
    run = get_run(run_id)
    limit = env_int("MAX_RECOVERY_ATTEMPTS", 3)
    if run.attempts > limit:
        raise RecoveryBudgetExhausted(
            f"run {run_id} has been launched {run.attempts} times (limit {limit} relaunches)"
        )
    backend = get_backend()
    if run.job_id:
        try:
            backend.stop_training(run.job_id, "KILL")
        except JobNotFound:
            pass  # already gone: the usual case after a node failure
    launched = backend.launch_training(training_job(run, run.task_token))
    update_run(
        run_id,
        status="TRAINING",
        job_id=launched.job_id,
        attempts=run.attempts + 1,
        resumed_from_step=checkpoint.get("step"),
    )
    return {
        "job_id": launched.job_id,
        "resumed_from_step": checkpoint.get("step"),
        "attempt": run.attempts + 1,
    }
