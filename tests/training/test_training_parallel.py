"""Two CPU processes (gloo) - FSDP2, and FSDP2 + expert parallelism - train the same model as one process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import free_port
from tests.training.conftest import REPO, TINY_ARGS, run_train, train_env

ARGS = ["--max-steps", "8", "--checkpoint-every", "4", *TINY_ARGS]
# Measured: losses agree to the last printed digit; gradient norms differ by ~2e-5 relative (the sum of
# squares is reduced shard by shard), weights after 8 steps by <= 1e-5 absolute (reduction order in gloo).
LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-4
WEIGHT_ATOL = 1e-4


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    done = run_train("--data", str(corpus_dir), "--output", str(out), *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _torchrun(corpus_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        "-m", "moe_core.train", "--data", str(corpus_dir), "--output", str(out), *ARGS, *extra,
    ]  # fmt: skip


def _two_processes(corpus_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    try:
        run = subprocess.run(
            _torchrun(corpus_dir, out, *extra),
            capture_output=True,
            text=True,
            timeout=240,
            env=train_env(),
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun with 2 gloo processes did not finish in 240 s: {str(e.stderr)[-3000:]}")
    assert run.returncode == 0, run.stderr[-5000:]
    assert "2 process(es) on cpu" in run.stderr
    return run


def _assert_same_training(one: Path, two: Path) -> None:
    a, b = _records(one), _records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=LOSS_RTOL), ra["step"]
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=GRAD_NORM_RTOL), ra["step"]
    wa = load_file(one / "model" / "model.safetensors")
    wb = load_file(two / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() <= WEIGHT_ATOL, name


@pytest.mark.slow
def test_fsdp2_on_two_gloo_processes_matches_one_process(tmp_path: Path, corpus_dir: Path, one_process: Path):
    two = tmp_path / "two"
    _two_processes(corpus_dir, two)
    _assert_same_training(one_process, two)
    # The sharded checkpoint lists both ranks' files; the manifest was written by rank 0 from their parts.
    manifest = json.loads((two / "checkpoints" / "step-0000000008" / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert manifest["world_size"] == 2
    assert {"__0_0.distcp", "__1_0.distcp", "rng/rank-00000.pt", "rng/rank-00001.pt", ".metadata"} <= paths


@pytest.mark.slow
def test_expert_parallel_matches_one_process_and_resumes_exactly_after_sigterm(
    tmp_path: Path, corpus_dir: Path, one_process: Path
):
    straight = tmp_path / "ep"
    run = _two_processes(corpus_dir, straight, "--expert-parallel")
    assert "expert parallel: 8 routed experts per process" in run.stderr
    _assert_same_training(one_process, straight)

    # SIGTERM to torchrun reaches both workers: they agree on the step, checkpoint it, and stop.
    interrupted = tmp_path / "ep-interrupted"
    proc = subprocess.Popen(
        _torchrun(corpus_dir, interrupted, "--expert-parallel"),
        env=train_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        metrics = interrupted / "metrics.jsonl"
        while not metrics.is_file() or len(metrics.read_text().splitlines()) < 3:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the expert-parallel run never reached step 3"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    status = json.loads((interrupted / "exit_status.json").read_text())
    assert status["status"] == "preempted", status
    resumed = _two_processes(corpus_dir, interrupted, "--expert-parallel")
    assert "resumed from the checkpoint of step" in resumed.stderr
    assert [(r["step"], r["loss"]) for r in _records(interrupted)] == [
        (r["step"], r["loss"]) for r in _records(straight)
    ]
    assert (interrupted / "model" / "model.safetensors").read_bytes() == (
        straight / "model" / "model.safetensors"
    ).read_bytes()
