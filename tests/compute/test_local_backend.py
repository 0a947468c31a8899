"""The local backend with real processes: the real training worker and the real inference worker (`moectl serve`)
on a tiny model, reached through moto's HTTP server for S3; plus records-only behaviour (clusters, idle).

Process-management edge cases (a process group killed whole, a reused pid) use a stand-in worker script, since
what they test is the launcher, not the worker."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from moe_control.compute import InferenceDeployFailed, TrainingAlreadyRunning, TrainingJob
from moe_control.compute.local import LocalBackend, process_alive

TEXT = "def add(a, b):\n    return a + b\n\n" * 400


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def local_env(moto_server: str, tmp_path_factory: pytest.TempPathFactory):
    """LOCALCLOUD_STATE_DIR and AWS_ENDPOINT_URL (moto's server, which the worker processes reach too)."""
    mp = pytest.MonkeyPatch()
    state = tmp_path_factory.mktemp("state")
    mp.setenv("LOCALCLOUD_STATE_DIR", str(state))
    mp.setenv("AWS_ENDPOINT_URL", moto_server)
    mp.setenv("CLUSTER_NAME", "local-cluster")
    from moe_control import aws

    aws._client.cache_clear()
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    for bucket in ("compute-data", "compute-models"):
        s3.create_bucket(Bucket=bucket)
    body = TEXT.encode()
    s3.put_object(Bucket="compute-data", Key="datasets/tiny/a.py", Body=body)
    manifest = {
        "name": "tiny",
        "files": [{"path": "a.py", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}],
    }
    s3.put_object(
        Bucket="compute-data", Key="datasets/tiny/manifest.json", Body=json.dumps(manifest).encode()
    )
    yield {"state": state, "s3": s3}
    mp.undo()
    aws._client.cache_clear()


def _job(run_id: str, **kw) -> TrainingJob:
    return TrainingJob(
        **{
            "run_id": run_id,
            "dataset_uri": "s3://compute-data/datasets/tiny/manifest.json",
            "preset": "tiny",
            "max_steps": 3,
            "checkpoint_every": 2,
            "seq_len": 32,
            "batch_size": 2,
            "vocab_size": 300,
            "checkpoint_uri": f"s3://compute-models/checkpoints/{run_id}",
            "artifact_uri": f"s3://compute-models/models/{run_id}/",
            **kw,
        }
    )


@pytest.fixture(scope="module")
def trained(local_env) -> dict:
    """One real training run, launched by a short-lived process (as a Lambda worker would), which exits at once."""
    backend = LocalBackend()
    staged = backend.stage_data("s3://compute-data/datasets/tiny/manifest.json", "run-ok")
    launcher = textwrap.dedent(f"""
        from moe_control.compute.local import LocalBackend
        from moe_control.compute.base import TrainingJob
        job = TrainingJob.model_validate_json({_job("run-ok", data_path=staged).model_dump_json()!r})
        print(LocalBackend().launch_training(job).model_dump_json())
    """)
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", launcher], capture_output=True, text=True, timeout=60, check=True
    )
    launched = json.loads(out.stdout)
    assert time.monotonic() - started < 30  # the launcher does not wait for the training
    first_status = backend.job_status("run-ok")
    _wait(lambda: backend.job_status("run-ok") != "RUNNING", 150, "the training worker to finish")
    return {"backend": backend, "launched": launched, "staged": staged, "first_status": first_status}


@pytest.mark.slow
def test_training_worker_outlives_its_launcher_and_succeeds(trained, local_env) -> None:
    backend = trained["backend"]
    assert trained["first_status"] == "RUNNING"  # still training after the launcher process had exited
    assert backend.job_status("run-ok") == "SUCCEEDED", Path(backend.job_record("run-ok")["log"]).read_text()[
        -3000:
    ]
    rec = backend.job_record("run-ok")
    assert rec["cluster"] == "local-cluster" and rec["attempt"] == 1 and rec["ended_at"]
    assert rec["cmd"][1:3] == ["-m", "moe_core.train"] and trained["staged"] in rec["cmd"]
    keys = {o["Key"] for o in local_env["s3"].list_objects_v2(Bucket="compute-models")["Contents"]}
    assert "models/run-ok/model.safetensors" in keys and "models/run-ok/config.json" in keys
    assert any(k.startswith("checkpoints/run-ok/step-") and k.endswith("manifest.json") for k in keys)


def test_stage_data_copies_the_manifest_and_its_files_into_scratch(local_env) -> None:
    path = Path(LocalBackend().stage_data("s3://compute-data/datasets/tiny/manifest.json", "run-stage"))
    assert path == local_env["state"] / "scratch" / "run-stage"
    assert (path / "a.py").read_text() == TEXT
    assert json.loads((path / "manifest.json").read_text())["name"] == "tiny"


def test_stage_data_of_a_missing_dataset_is_staging_failed(local_env) -> None:
    from moe_control.compute import StagingFailed

    with pytest.raises(StagingFailed, match="NoSuchKey|Not Found|404"):
        LocalBackend().stage_data("s3://compute-data/datasets/nope/manifest.json", "run-x")


@pytest.mark.slow
def test_term_makes_the_worker_checkpoint_and_exit_preempted(local_env) -> None:
    backend = LocalBackend()
    job = _job(
        "run-term",
        max_steps=100000,
        checkpoint_every=100000,
        data_path=str(local_env["state"] / "scratch" / "run-stage"),
    )
    if not Path(job.data_path).is_dir():
        backend.stage_data(job.dataset_uri, "run-stage")
    backend.launch_training(job)
    metrics = backend.run_dir("run-term") / "metrics.jsonl"
    _wait(lambda: metrics.is_file() and metrics.stat().st_size > 0, 90, "the first training step")
    with pytest.raises(TrainingAlreadyRunning):
        backend.launch_training(job)

    backend.stop_training("run-term", "TERM")

    _wait(lambda: backend.job_status("run-term") != "RUNNING", 60, "the worker to stop")
    assert backend.job_status("run-term") == "FAILED"
    status = json.loads((backend.run_dir("run-term") / "exit_status.json").read_text())
    assert status["status"] == "preempted" and status["exit_code"] == 75
    keys = {
        o["Key"]
        for o in local_env["s3"].list_objects_v2(Bucket="compute-models", Prefix="checkpoints/run-term/")[
            "Contents"
        ]
    }
    assert any(k.endswith("/manifest.json") for k in keys)  # the TERM checkpoint is complete


@pytest.mark.slow
def test_inference_is_deployed_blue_green_and_a_broken_model_keeps_the_old_one_serving(trained) -> None:
    backend = trained["backend"]
    model = str(backend.run_dir("run-ok") / "model")
    first = backend.deploy_inference(model, "moe-local")
    try:
        assert first.status == "InService" and first.url.startswith("http://127.0.0.1:")
        body = json.dumps({"prompt": "def add", "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(
            f"{first.url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["choices"][0]["text"] is not None

        second = backend.deploy_inference("s3://compute-models/models/run-ok/", "moe-local")
        assert second.url != first.url and second.variant == "generation-2"
        _wait(lambda: not backend._healthy(first.url), 15, "the old worker to stop")
        assert backend.endpoint_status("moe-local").model_uri == "s3://compute-models/models/run-ok/"

        with pytest.raises(InferenceDeployFailed, match="exited before it was healthy"):
            backend.deploy_inference(str(backend.state_dir / "no-such-model"), "moe-local")
        assert backend.endpoint_status("moe-local").status == "InService"
        assert backend.endpoint_status("moe-local").url == second.url
    finally:
        backend.stop_inference("moe-local")
    assert backend.endpoint_status("moe-local").status == "NotFound"


# ---------------------------------------------------------------- process management with a stand-in worker
STAND_IN = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(os.environ["CHILD_PID_FILE"], "w").write(str(child.pid))
    time.sleep(120)
""")


def test_kill_stops_the_whole_process_group_and_the_job_reads_failed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOCALCLOUD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("CHILD_PID_FILE", str(tmp_path / "child.pid"))
    backend = LocalBackend()
    monkeypatch.setattr(backend, "training_command", lambda job: [sys.executable, "-c", STAND_IN])
    backend.launch_training(_job("run-kill", task_token="secret-token"))
    _wait(lambda: (tmp_path / "child.pid").is_file(), 20, "the stand-in worker's child")
    rec = backend.job_record("run-kill")
    child = int((tmp_path / "child.pid").read_text())
    assert backend.job_status("run-kill") == "RUNNING"

    backend.stop_training("run-kill", "KILL")

    _wait(lambda: not process_alive(rec["pid"], rec["start_ticks"]), 10, "the worker to die")
    _wait(lambda: not process_alive(child, None), 10, "the worker's child to die")
    assert backend.job_status("run-kill") == "FAILED"  # killed: no exit status written


def test_a_recorded_pid_reused_by_another_process_is_not_taken_for_the_job(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOCALCLOUD_STATE_DIR", str(tmp_path))
    backend = LocalBackend()
    (tmp_path / "jobs").mkdir()
    rec = {"run_id": "r", "pid": os.getpid(), "start_ticks": "1", "output": str(tmp_path / "runs/r"),
           "started_at": "2026-01-01T00:00:00+00:00", "ended_at": None}  # fmt: skip
    (tmp_path / "jobs" / "r.json").write_text(json.dumps(rec))
    assert backend.job_status("r") == "FAILED"
    assert backend.job_status("never-launched") == "NOT_FOUND"


def test_local_cluster_records_and_idle_clusters(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOCALCLOUD_STATE_DIR", str(tmp_path))
    backend = LocalBackend()
    assert backend.describe_cluster("c").status == "NotFound"
    state = backend.ensure_cluster("c")
    assert state.status == "InService" and backend.ensure_cluster("c") == state
    assert backend.scale_cluster("c", 3).instance_groups[0]["TargetCount"] == 3
    assert "no nodes to replace" in backend.replace_node("c", "i-0123")
    assert backend.list_idle_clusters(idle_minutes=60) == []
    assert backend.list_idle_clusters(idle_minutes=0) == ["c"]
    backend.delete_cluster("c")
    assert backend.describe_cluster("c").status == "NotFound"
