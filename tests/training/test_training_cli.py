"""`moectl train` as a process: exit codes, SIGTERM preemption, Prometheus, S3 + Step Functions end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
import requests

from moe_control.checkpoints import LocalCheckpointStore, find_latest_complete_checkpoint
from tests.conftest import free_port
from tests.training.conftest import REPO, TINY_ARGS, run_train, train_cmd, train_env


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path: Path, corpus_dir: Path):
    missing = run_train("--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "a"), timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "Traceback" not in missing.stderr
    assert "nowhere" in missing.stderr
    status = json.loads((tmp_path / "a" / "exit_status.json").read_text())
    assert status == {"status": "failed", "exit_code": 2, "detail": status["detail"]}


def test_unknown_preset_is_bad_input(tmp_path: Path, corpus_dir: Path):
    from moe_core.train.errors import BadInput
    from moe_core.train.options import TrainOptions
    from moe_core.train.trainer import run_training

    with pytest.raises(BadInput, match="unknown preset 'huge'"):
        run_training(TrainOptions(data=str(corpus_dir), output=tmp_path / "b", preset="huge", progress=False))


@pytest.mark.slow
def test_sigterm_checkpoints_then_exits_75_and_the_next_run_resumes(tmp_path: Path, corpus_dir: Path):
    out = tmp_path / "run"
    port = free_port()
    args = [
        "--data",
        str(corpus_dir),
        "--output",
        str(out),
        "--max-steps",
        "400",
        "--checkpoint-every",
        "1000",
    ]
    proc = subprocess.Popen(
        train_cmd(*args, "--metrics-port", str(port), *TINY_ARGS),
        env=train_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        scraped = ""
        while "moe_train_step 3" not in scraped and "moe_train_step 4" not in scraped:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no step 3 on the Prometheus endpoint"
            try:
                scraped = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                )
            except OSError:
                pass
            time.sleep(0.05)
        assert "moe_train_loss" in scraped and "moe_train_tokens_total" in scraped
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert rc == 75, stderr[-3000:]
    assert "preempted at step" in stderr
    assert json.loads((out / "exit_status.json").read_text())["status"] == "preempted"
    last_logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]["step"]
    saved = find_latest_complete_checkpoint(LocalCheckpointStore(out / "checkpoints")).manifest
    assert saved is not None and saved.step == last_logged  # not a multiple of --checkpoint-every

    again = run_train(*args[:4], "--max-steps", str(saved.step + 2), "--checkpoint-every", "1000", *TINY_ARGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from the checkpoint of step {saved.step}" in again.stderr
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, saved.step + 3)
    )


@pytest.fixture
def sfn_task(moto_server: str, monkeypatch: pytest.MonkeyPatch):
    """A real moto state machine waiting in a `.waitForTaskToken` task; yields (token, execution ARN)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    # moto's Step Functions calls SQS through its own server: it must know the server's port.
    monkeypatch.setenv("MOTO_PORT", moto_server.rsplit(":", 1)[1])
    requests.post(f"{moto_server}/moto-api/config", json={"stepfunctions": {"execute_state_machine": True}})
    sqs = boto3.client("sqs", endpoint_url=moto_server)
    sfn = boto3.client("stepfunctions", endpoint_url=moto_server)

    def start(name: str) -> tuple[str, str]:
        queue = sqs.create_queue(QueueName=f"tokens-{name}")["QueueUrl"]
        task = {
            "Type": "Task",
            "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
            "Parameters": {"QueueUrl": queue, "MessageBody": {"token.$": "$$.Task.Token"}},
            "HeartbeatSeconds": 60,  # as the pipeline's task: moto accepts heartbeats only for such tasks
            "End": True,
        }
        definition = {"StartAt": "Train", "States": {"Train": task}}
        arn = sfn.create_state_machine(
            name=f"train-{name}",
            definition=json.dumps(definition),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=arn, name=name, input="{}")["executionArn"]
        for _ in range(100):
            msgs = sqs.receive_message(QueueUrl=queue).get("Messages")
            if msgs:
                return json.loads(msgs[0]["Body"])["token"], execution
            time.sleep(0.05)
        pytest.fail("the state machine never sent its task token")

    def result(execution: str) -> dict:
        for _ in range(100):
            d = sfn.describe_execution(executionArn=execution)
            if d["status"] != "RUNNING":
                return d
            time.sleep(0.05)
        return d

    return start, result


@pytest.mark.slow
def test_s3_data_checkpoints_artifact_and_task_success(
    tmp_path: Path, corpus_dir: Path, moto_server, sfn_task
):
    start, result = sfn_task
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="train-e2e")
    for p in corpus_dir.rglob("*"):
        if p.is_file():
            s3.upload_file(str(p), "train-e2e", f"datasets/stdlib/{p.relative_to(corpus_dir).as_posix()}")
    token, execution = start("ok")
    env = {**train_env(), "AWS_ENDPOINT_URL": moto_server}
    out = tmp_path / "run"
    done = run_train(
        "--data", "s3://train-e2e/datasets/stdlib/", "--output", str(out), "--run-id", "e2e-1",
        "--max-steps", "20", "--checkpoint-every", "8", "--keep", "2",
        "--checkpoint-uri", "s3://train-e2e/checkpoints/e2e-1", "--artifact-uri", "s3://train-e2e/models/e2e-1/",
        "--task-token", token, "--heartbeat-seconds", "0.5", *TINY_ARGS, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    desc = result(execution)
    assert desc["status"] == "SUCCEEDED", desc
    output = json.loads(desc["output"])
    assert output["run_id"] == "e2e-1" and output["final_step"] == 20
    assert output["artifact_uri"] == "s3://train-e2e/models/e2e-1/"
    assert output["checkpoint_uri"] == "s3://train-e2e/checkpoints/e2e-1/"
    assert output["metrics"]["final_loss"] < output["metrics"]["first_loss"]

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="train-e2e")["Contents"]}
    # Steps 8, 16 and the final 20 were saved; the newest two are kept.
    steps = sorted({k.split("/")[2] for k in keys if k.startswith("checkpoints/e2e-1/")})
    assert steps == ["step-0000000016", "step-0000000020"]
    assert "checkpoints/e2e-1/step-0000000020/manifest.json" in keys
    artifact = {k.rsplit("/", 1)[1] for k in keys if k.startswith("models/e2e-1/")}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "routing_stats.json",
        "loss_curve.png",
    } <= artifact

    # The artifact is what serving loads: the model core's loader and the tokenizer accept it.
    from moe_core.artifact import load_model
    from moe_core.data.tokenizer import load_tokenizer

    local = tmp_path / "artifact"
    local.mkdir()
    for name in artifact:
        s3.download_file("train-e2e", f"models/e2e-1/{name}", str(local / name))
    model = load_model(local)
    tok = load_tokenizer(local)
    assert model.config.vocab_size >= tok.get_vocab_size()
    routing = json.loads((local / "routing_stats.json").read_text())
    assert len(routing["layers"]) == len(model.routers())
    k = model.config.n_activated_experts
    totals = [sum(layer["tokens_per_expert"]) for layer in routing["layers"]]
    # Every step routes top-k x batch x seq_len tokens per trunk router; the MTP block sees seq_len - 1.
    assert (
        totals == [20 * k * 4 * 32] * model.config.n_moe_layers + [20 * k * 4 * 31] * model.config.mtp_depth
    )
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "tokens_per_s", "mfu", "grad_norm", "expert_load_max_over_mean"} <= set(
        records[0]
    )

    # A second launch of the same run (as recovery would) resumes from S3 and stops at once.
    token2, execution2 = start("again")
    again = run_train(
        "--data", "s3://train-e2e/datasets/stdlib/", "--output", str(tmp_path / "node2"), "--run-id", "e2e-1",
        "--max-steps", "20", "--checkpoint-uri", "s3://train-e2e/checkpoints/e2e-1", "--task-token", token2,
        *TINY_ARGS, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from the checkpoint of step 20" in again.stderr
    assert json.loads(result(execution2)["output"])["final_step"] == 20

    # Bad input reported as a named failure.
    token3, execution3 = start("bad")
    bad = run_train(
        "--data",
        "s3://train-e2e/nothing-here/",
        "--output",
        str(tmp_path / "bad"),
        "--task-token",
        token3,
        env=env,
    )
    assert bad.returncode == 2
    desc = result(execution3)
    assert desc["status"] == "FAILED"
    history = boto3.client("stepfunctions", endpoint_url=moto_server).get_execution_history(
        executionArn=execution3
    )
    failed = [e for e in history["events"] if e["type"] == "TaskFailed"]
    assert failed and failed[0]["taskFailedEventDetails"]["error"] == "Training.BadInput"


def test_task_reporter_sends_heartbeats_then_success(sfn_task):
    from moe_core.train.reporting import TaskReporter

    start, result = sfn_task
    token, execution = start("heartbeats")
    reporter = TaskReporter(token, heartbeat_seconds=0.05)
    reporter.start_heartbeats()
    deadline = time.monotonic() + 10
    while reporter.heartbeats_sent < 3:
        assert time.monotonic() < deadline, "no heartbeats were accepted"
        time.sleep(0.02)
    reporter.success({"run_id": "r", "final_step": 1})
    assert json.loads(result(execution)["output"]) == {"run_id": "r", "final_step": 1}
    assert reporter._thread is None  # the heartbeat thread has stopped


@pytest.mark.slow
def test_container_entrypoint_forwards_sigterm_and_exits_75(tmp_path: Path, corpus_dir: Path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    env = {**train_env(), "NPROC_PER_NODE": "1", "PATH": f"{torchrun.parent}:{os.environ['PATH']}"}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [str(REPO / "workers/training/entrypoint.sh"), "--data", str(corpus_dir), "--output", str(out),
         "--max-steps", "400", "--checkpoint-every", "1000", *TINY_ARGS],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (
            not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 2
        ):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the worker never trained a step"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=90)
    finally:
        proc.kill()
    assert rc == 75, proc.stderr.read()[-3000:]
    assert find_latest_complete_checkpoint(LocalCheckpointStore(out / "checkpoints")).manifest is not None
