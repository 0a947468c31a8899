"""`moectl demo`: the whole pipeline on the local cloud, as a readable timeline.

1. start the local cloud and deploy template.yaml
2. upload a dataset (the standard library's own source, so nothing is downloaded) and then its manifest
3. the upload's event starts the training pipeline: validate -> cluster -> stage -> train (the worker reports
   to the pipeline's task token)
4. once two checkpoints are complete, kill the worker (SIGKILL) and send a HyperPod node health event
5. recovery: classify -> replace the node -> newest complete checkpoint -> relaunch; the worker resumes
6. training finishes: evaluate -> register the model (PendingManualApproval)
7. approve it through the API: the registry's event starts promotion -> placement plan -> deploy an
   inference worker -> smoke test -> live
8. a completion request through the API returns generated text

Any step that fails or times out ends the demo with exit code 1 and names the step.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from localcloud.cloud import LocalCloud

console = Console(highlight=False)

DEMO_DATASET = "stdlib-demo"
DEMO_TRAINING = {
    "preset": "tiny",
    "max_steps": 160,
    "checkpoint_every": 20,
    "seq_len": 64,
    "batch_size": 8,
    "vocab_size": 512,
    "seed": 0,
}


def _why(desc: dict[str, Any]) -> str:
    """A failed execution's error and message, without the handler's stack trace."""
    cause = desc.get("cause") or ""
    try:
        parsed = json.loads(cause)
        cause = f"{parsed.get('errorType')}: {parsed.get('errorMessage')}"
    except (json.JSONDecodeError, AttributeError):
        pass
    return f"{desc['status']}: {desc.get('error')}: {cause[:600]}"


class DemoFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    rows: list[tuple[float, str, str]] = field(default_factory=list)

    def say(self, step: str, text: str) -> None:
        t = time.monotonic() - self.started
        self.rows.append((t, step, text))
        console.print(f"[dim]{t:6.1f}s[/dim]  [bold cyan]{step:<10}[/bold cyan] {text}")


def wait_for(what: str, step: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; DemoFailed(step) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(step, f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------- building blocks (also used by the tests)
def upload_stdlib_dataset(cloud: LocalCloud, name: str, training: dict[str, Any], max_bytes: int) -> str:
    """Write the stdlib corpus with its manifest, upload the files and then the manifest; returns its key."""
    from moe_core.data.corpus import write_stdlib_dataset

    folder = Path(tempfile.mkdtemp(prefix="moe-demo-")) / name
    manifest = write_stdlib_dataset(folder, max_bytes=max_bytes, name=name, training=training)
    s3 = cloud.client("s3")
    bucket = cloud.deployment.physical["DataBucket"]
    for f in manifest.files:
        s3.upload_file(str(folder / f.path), bucket, f"datasets/{name}/{f.path}")
    key = f"datasets/{name}/manifest.json"
    s3.upload_file(str(folder / "manifest.json"), bucket, key)
    return key


def execution(cloud: LocalCloud, machine: str, name: str | None = None) -> dict[str, Any] | None:
    """The newest execution of `machine` (named `name`, if given), described."""
    sfn = cloud.client("stepfunctions")
    for e in cloud.executions(machine):
        if name is None or e["name"] == name:
            return sfn.describe_execution(executionArn=e["executionArn"])
    return None


def finished(cloud: LocalCloud, machine: str, name: str | None = None) -> dict[str, Any] | None:
    desc = execution(cloud, machine, name)
    return desc if desc and desc["status"] != "RUNNING" else None


def get_run(cloud: LocalCloud, run_id: str) -> dict[str, Any] | None:
    table = cloud.deployment.physical["RunsTable"]
    item = cloud.client("dynamodb").get_item(TableName=table, Key={"run_id": {"S": run_id}}).get("Item")
    if not item:
        return None
    from boto3.dynamodb.types import TypeDeserializer

    return {k: TypeDeserializer().deserialize(v) for k, v in item.items()}


def complete_checkpoints(cloud: LocalCloud, run_id: str) -> list[int]:
    s3 = cloud.client("s3")
    bucket = cloud.deployment.physical["CheckpointBucket"]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"checkpoints/{run_id}/")
    steps = []
    for page in pages:
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/manifest.json"):
                steps.append(int(obj["Key"].split("/")[-2].split("-")[-1]))
    return sorted(steps)


def worker_record(cloud: LocalCloud, run_id: str) -> dict[str, Any] | None:
    path = cloud.state_dir / "jobs" / f"{run_id}.json"
    return json.loads(path.read_text()) if path.exists() else None


def node_health_event(cluster: str, instance_id: str, repair: str = "Replace") -> dict[str, Any]:
    """A HyperPod node health event, as SageMaker sends it to EventBridge."""
    detail = {
        "ClusterArn": f"arn:aws:sagemaker:us-east-1:123456789012:cluster/{cluster}",
        "ClusterName": cluster,
        "InstanceId": instance_id,
        "HealthSummary": {
            "HealthStatus": "Unhealthy",
            "HealthStatusReason": "GPU Xid 79: fallen off the bus",
            "RepairAction": repair,
            "Recommendation": "Replace the instance",
        },
    }
    return {
        "Source": "aws.sagemaker",
        "DetailType": "SageMaker HyperPod Cluster Node Health Event",
        "Detail": json.dumps(detail),
    }


def api_call(
    cloud: LocalCloud, method: str, path: str, body: Any = None, timeout: float = 120
) -> tuple[int, Any]:
    api = cloud.apis["ControlApi"]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if api.api_keys:
        req.add_header("x-api-key", sorted(api.api_keys)[0])
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except json.JSONDecodeError:
            return e.code, raw.decode(errors="replace")


def stop_local_workers(cloud: LocalCloud) -> None:
    """Stop every training and inference process the local backend started (the demo leaves nothing behind)."""
    for folder in ("jobs", "endpoints"):
        for rec in (cloud.state_dir / folder).glob("*.json"):
            try:
                pid = json.loads(rec.read_text()).get("pid")
                if pid:
                    os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError, json.JSONDecodeError, OSError):
                pass


# ---------------------------------------------------------------- the demo
def run_demo(
    state_dir: Path | None = None, max_bytes: int = 300_000, timeout_scale: float = 1.0
) -> dict[str, Any]:
    tl = Timeline()
    state_dir = state_dir or Path(tempfile.mkdtemp(prefix="moe-localcloud-"))
    cloud = LocalCloud(state_dir=state_dir)
    result: dict[str, Any] = {"state_dir": str(state_dir)}
    T = timeout_scale
    try:
        cloud.start()
        cloud.deploy()
        tl.say(
            "deploy",
            f"local cloud on {cloud.endpoint}; template deployed ({len(cloud.deployment.physical)} "
            f"resources) in {cloud.timings.total_s:.1f} s; API {cloud.apis['ControlApi'].url}",
        )

        key = upload_stdlib_dataset(cloud, DEMO_DATASET, DEMO_TRAINING, max_bytes)
        tl.say(
            "upload",
            f"dataset s3://{cloud.deployment.physical['DataBucket']}/{key} (standard library source)",
        )

        pipeline = wait_for(
            "the training pipeline to start",
            "pipeline",
            lambda: execution(cloud, "TrainingPipelineStateMachine"),
            30 * T,
        )
        run_id = pipeline["name"]
        tl.say("pipeline", f"S3 event -> EventBridge -> training_pipeline execution {run_id}")

        wait_for(
            "the worker to start training",
            "train",
            lambda: (
                (get_run(cloud, run_id) or {}).get("status") == "TRAINING"
                or finished(cloud, "TrainingPipelineStateMachine", run_id)
            ),
            120 * T,
        )
        _fail_if_finished(cloud, "TrainingPipelineStateMachine", run_id, "train")
        run = get_run(cloud, run_id)
        tl.say(
            "train",
            f"validated, cluster {run.get('cluster')} ready, data staged; worker {run.get('job_id')} "
            f"training the tiny model ({DEMO_TRAINING['max_steps']} steps, checkpoint every "
            f"{DEMO_TRAINING['checkpoint_every']})",
        )

        steps = wait_for(
            "two complete checkpoints",
            "checkpoint",
            lambda: (s := complete_checkpoints(cloud, run_id)) and len(s) >= 2 and s,
            240 * T,
            0.3,
        )
        record = worker_record(cloud, run_id)
        os.killpg(record["pid"], signal.SIGKILL)
        tl.say("failure", f"checkpoints at steps {steps}; killed the worker (pid {record['pid']}, SIGKILL)")

        cloud.client("events").put_events(Entries=[node_health_event(run["cluster"], "i-0demo0node0001")])
        tl.say(
            "failure", "sent 'SageMaker HyperPod Cluster Node Health Event' (Unhealthy, RepairAction Replace)"
        )

        recovery = wait_for(
            "the recovery workflow to finish",
            "recovery",
            lambda: finished(cloud, "RecoveryStateMachine"),
            60 * T,
        )
        if recovery["status"] != "SUCCEEDED":
            raise DemoFailed(
                "recovery", f"{recovery['status']}: {recovery.get('error')}: {recovery.get('cause')}"
            )
        out = json.loads(recovery["output"])
        resumed = out.get("relaunched", {}).get("result", {}).get("resumed_from_step")
        tl.say(
            "recovery",
            f"classified ({out['classification']['reason']}), node replaced, relaunched from the "
            f"newest complete checkpoint: step {resumed}",
        )
        result["resumed_from_step"] = resumed

        done = wait_for(
            "training to finish and the model to be registered",
            "register",
            lambda: finished(cloud, "TrainingPipelineStateMachine", run_id),
            300 * T,
            1.0,
        )
        if done["status"] != "SUCCEEDED":
            raise DemoFailed(
                "register", f"pipeline {done['status']}: {done.get('error')}: {done.get('cause')}"
            )
        out = json.loads(done["output"])
        model_arn = out["registered"]["result"]["model_package_arn"]
        tl.say(
            "register",
            f"trained to step {out['trained'].get('final_step')}, loss "
            f"{out['evaluation']['result']['loss']:.3f} (bar {out['evaluation']['result']['bar']:.3f}); "
            f"registered {model_arn} (PendingManualApproval)",
        )

        version = model_arn.rsplit("/", 1)[-1]
        status, body = api_call(cloud, "POST", f"/models/{version}/approve", {})
        if status >= 300:
            raise DemoFailed("approve", f"POST /models/{version}/approve -> {status}: {body}")
        tl.say(
            "approve", f"POST /models/{version}/approve -> {status}; the registry's event starts promotion"
        )

        promo = wait_for(
            "promotion to finish", "promotion", lambda: finished(cloud, "PromotionStateMachine"), 240 * T, 1.0
        )
        if promo["status"] != "SUCCEEDED":
            raise DemoFailed("promotion", _why(promo))
        out = json.loads(promo["output"])
        tl.say(
            "promotion",
            f"gates passed, placement plan (expert budget {out['placement']['expert_budget']:.2f}), "
            f"deployed {out['endpoint']['endpoint_id']} at {out['endpoint']['url']}, smoke test "
            f"passed, traffic shifted",
        )

        prompt = "def fibonacci(n):\n"
        status, body = api_call(
            cloud, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": 32, "temperature": 0}
        )
        if status != 200:
            raise DemoFailed("complete", f"POST /v1/completions -> {status}: {body}")
        text = body["choices"][0]["text"]
        tl.say("complete", f"POST /v1/completions -> 200, {body['usage']['completion_tokens']} tokens:")
        console.print(f"[green]{prompt}{text}[/green]")
        result.update(run_id=run_id, model_package_arn=model_arn, completion=text, ok=True)
        tl.say("done", f"the whole pipeline ran in {time.monotonic() - tl.started:.0f} s")
        return result
    finally:
        stop_local_workers(cloud)
        cloud.stop()


def _fail_if_finished(cloud: LocalCloud, machine: str, name: str, step: str) -> None:
    desc = finished(cloud, machine, name)
    if desc is not None and desc["status"] != "SUCCEEDED":
        raise DemoFailed(
            step, f"{machine} {desc['status']}: {desc.get('error')}: {str(desc.get('cause'))[:500]}"
        )


def demo() -> None:
    """The whole pipeline on the local cloud: upload, train, fail, recover, register, approve, deploy, complete."""
    import typer

    try:
        run_demo()
    except DemoFailed as exc:
        console.print(f"[red]demo failed at step '{exc.step}':[/red] {exc.reason}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
