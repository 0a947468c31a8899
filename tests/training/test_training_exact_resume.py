"""Exact resume: a run killed with SIGKILL three times and resumed each time equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.training.conftest import REPO, TINY_ARGS, run_train, train_cmd, train_env

MAX_STEPS = 18
ARGS = ["--max-steps", str(MAX_STEPS), "--checkpoint-every", "3", "--keep", "2", *TINY_ARGS]


def _steps(out: Path) -> list[dict]:
    p = out / "metrics.jsonl"
    if not p.is_file():
        return []
    lines = p.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def _kill_at(corpus: Path, out: Path, step: int) -> int:
    """Start the worker, SIGKILL it as soon as it has logged ``step``; return the step it was killed at."""
    proc = subprocess.Popen(
        train_cmd("--data", str(corpus), "--output", str(out), *ARGS),
        env=train_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            done = _steps(out)
            if done and done[-1]["step"] >= step:
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"the worker exited ({proc.returncode}) before step {step}: {proc.stderr.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"step {step} not reached in time")
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return done[-1]["step"]


@pytest.mark.slow
def test_sigkill_at_three_random_steps_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, corpus_dir: Path
):
    seed = int(os.environ.get("RESUME_TEST_SEED", time.time_ns() % 10_000))
    kill_steps = sorted(random.Random(seed).sample(range(2, MAX_STEPS - 1), 3))
    print(f"RESUME_TEST_SEED={seed}: SIGKILL at steps {kill_steps}")

    straight = tmp_path / "straight"
    done = run_train("--data", str(corpus_dir), "--output", str(straight), *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    killed_at = [_kill_at(corpus_dir, interrupted, s) for s in kill_steps]
    final = run_train("--data", str(corpus_dir), "--output", str(interrupted), *ARGS)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resumed from the checkpoint of step" in final.stderr, (killed_at, final.stderr[-2000:])

    def per_step(out: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["lm_loss"], r["grad_norm"], r["lr"]) for r in _steps(out)]

    assert per_step(interrupted) == per_step(straight)
    assert [r["step"] for r in _steps(interrupted)] == list(range(1, MAX_STEPS + 1))
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].equal(b[name]), (
            f"{name} differs (kills at {killed_at})"
        )
    assert (straight / "model" / "model.safetensors").read_bytes() == (
        interrupted / "model" / "model.safetensors"
    ).read_bytes()
    assert json.loads((straight / "model" / "routing_stats.json").read_text()) == json.loads(
        (interrupted / "model" / "routing_stats.json").read_text()
    )
