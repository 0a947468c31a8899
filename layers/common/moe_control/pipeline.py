"""The training pipeline's steps: validate, ensure the cluster, stage data, launch with a task token, evaluate,
register. Each function is one state of state_machines/training_pipeline.asl.json (called by a thin handler)."""

from __future__ import annotations

import math
import os
from typing import Any

from moe_control import events as ev
from moe_control.aws import client
from moe_control.compute import ClusterNotReady, TrainingJob, get_backend
from moe_control.dataset_validation import check_files, read_manifest
from moe_control.errors import ClusterFailed, EvaluationFailed
from moe_control.runs import Run, get_run, put_run, update_run
from moe_control.settings import env, env_float, env_int


def validate_dataset(event: dict[str, Any], run_id: str) -> dict[str, Any]:
    bucket, key, _ = ev.s3_object(event)
    s3 = client("s3")
    manifest = read_manifest(s3, bucket, key)
    check_files(s3, bucket, key, manifest)
    run = Run(
        run_id=run_id,
        dataset=manifest.name,
        manifest_uri=f"s3://{bucket}/{key}",
        status="VALIDATED",
        files=len(manifest.files),
        total_bytes=manifest.total_bytes,
        preset=manifest.training.preset,
        max_steps=manifest.training.max_steps,
        training=manifest.training.model_dump(),
    )
    put_run(run)
    limits = {
        "heartbeat_timeout": env_int("TRAINING_HEARTBEAT_TIMEOUT", 600),
        "timeout": env_int("TRAINING_TIMEOUT", 7 * 86400),
    }
    return {"run_id": run.run_id, "dataset": run.dataset, "training": run.training, "limits": limits}


def ensure_cluster(run_id: str) -> dict[str, Any]:
    name = env("CLUSTER_NAME")
    state = get_backend().ensure_cluster(name)
    if state.status in ("Failed", "RollingBack", "Deleting"):
        raise ClusterFailed(f"cluster {name} is {state.status}")
    if state.status != "InService":
        raise ClusterNotReady(f"cluster {name} is {state.status}")
    update_run(run_id, cluster=name)
    return {"cluster": name, "status": state.status, "orchestrator": state.orchestrator}


def stage_data(run_id: str) -> dict[str, Any]:
    run = get_run(run_id)
    staged = get_backend().stage_data(run.manifest_uri, run_id)
    update_run(run_id, status="STAGED", staged_uri=staged)
    return {"staged_uri": staged}


def training_job(run: Run, task_token: str | None) -> TrainingJob:
    t = run.training
    return TrainingJob(
        run_id=run.run_id,
        dataset_uri=run.manifest_uri,
        data_path=run.staged_uri,
        cluster_name=run.cluster,
        preset=t.get("preset", run.preset),
        max_steps=int(t.get("max_steps", run.max_steps)),
        checkpoint_every=int(t.get("checkpoint_every", 50)),
        seq_len=int(t.get("seq_len", 128)),
        batch_size=int(t.get("batch_size", 8)),
        vocab_size=int(t.get("vocab_size", 2048)),
        seed=int(t.get("seed", 0)),
        checkpoint_uri=f"s3://{env('CHECKPOINT_BUCKET')}/checkpoints/{run.run_id}",
        artifact_uri=f"s3://{env('MODEL_BUCKET')}/models/{run.run_id}/",
        task_token=task_token,
        heartbeat_seconds=env_int("WORKER_HEARTBEAT_SECONDS", 30),
    )


def launch_training(run_id: str, task_token: str) -> dict[str, Any]:
    run = get_run(run_id)
    job = training_job(run, task_token)
    launched = get_backend().launch_training(job)
    update_run(
        run_id,
        status="TRAINING",
        job_id=launched.job_id,
        task_token=task_token,
        checkpoint_uri=job.checkpoint_uri,
        artifact_uri=job.artifact_uri,
        attempts=run.attempts + 1,
    )
    return {"job_id": launched.job_id, "backend": launched.backend}


def headline_loss(metrics: dict[str, Any]) -> Any:
    """The one loss the gates read: held-out if the worker measured it, else the final training loss."""
    return next((metrics[k] for k in ("eval_loss", "final_loss", "loss") if k in metrics), None)


def evaluate(run_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """The gate between training and the registry: the final loss is finite and clearly below chance.

    Chance is ln(vocabulary size) nats per token (a uniform guess); EVAL_MAX_LOSS_FRACTION of it is the bar.
    """
    run = get_run(run_id)
    metrics = result.get("metrics") or {}
    loss = headline_loss(metrics)
    vocab = int(run.training.get("vocab_size", 2048))
    bar = env_float("EVAL_MAX_LOSS_FRACTION", 0.9) * math.log(vocab)
    artifact = result.get("artifact_uri") or run.artifact_uri
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        update_run(run_id, status="FAILED", metrics=metrics, error=f"final loss {loss!r} is not a number")
        raise EvaluationFailed(f"run {run_id}: final loss {loss!r} is not a finite number")
    if loss > bar:
        update_run(run_id, status="FAILED", metrics=metrics, error=f"final loss {loss:.3f} > bar {bar:.3f}")
        raise EvaluationFailed(
            f"run {run_id}: final loss {loss:.3f} is above the bar {bar:.3f} (chance {math.log(vocab):.3f})"
        )
    update_run(run_id, status="TRAINED", metrics=metrics, artifact_uri=artifact)
    return {"loss": loss, "bar": bar, "artifact_uri": artifact, "final_step": result.get("final_step")}


def register(run_id: str) -> dict[str, Any]:
    from moe_control.registry import register_model

    run = get_run(run_id)
    numbers = {k: float(v) for k, v in run.metrics.items() if isinstance(v, (int, float))}
    arn = register_model(run_id, run.artifact_uri, numbers, os.environ.get("INFERENCE_IMAGE_URI") or "local")
    update_run(run_id, status="REGISTERED", model_package_arn=arn)
    return {"model_package_arn": arn}


def mark_failed(run_id: str | None, error: dict[str, Any]) -> dict[str, Any]:
    text = f"{error.get('Error', 'Error')}: {str(error.get('Cause', ''))[:1000]}"
    if run_id:
        try:
            update_run(run_id, status="FAILED", error=text)
        except Exception:  # the run may not exist (validation failed before it was recorded)
            pass
    return {"run_id": run_id, "error": text}
