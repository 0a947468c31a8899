"""Resharding: a checkpoint written by two gloo processes resumes on one, and one written by one on two.

A run is checkpointed at step 4 of 8; a copy of its folder without the later checkpoints is resumed under
another world size (FSDP2, and FSDP2 + expert parallel, whose expert weights are DTensors sharded by expert)
and must log the same per-step losses and end with the same weights, router bias, sampler position and
routing totals as the uninterrupted run. DCP stores each tensor's global shape and the chunk each rank
wrote, so loading into another layout is a read of other chunks; nothing in the worker converts anything.

Tolerance (the parallel tests' own): losses 1e-5 relative, gradient norms 1e-4 relative, weights 1e-4
absolute after 8 steps. Only the order of reductions differs (gloo's all-reduce, the gradient norm summed
shard by shard); seen here: losses <= 1e-7 relative apart, gradient norms ~2e-5, weights <= 3e-7. The router
bias moves in steps of gamma = 1e-3 from integer token counts, so it must be equal: one routing decision that
differed would show as a whole step.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import free_port
from tests.training.conftest import REPO, TINY_ARGS, run_train, train_env

RESUME_STEP = 4
MAX_STEPS = 8
ARGS = [
    "--max-steps",
    str(MAX_STEPS),
    "--checkpoint-every",
    str(RESUME_STEP),
    "--run-id",
    "reshard",
    *TINY_ARGS,
]
LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-4
WEIGHT_ATOL = 1e-4
BIAS_ATOL = 1e-7  # far below one bias step (1e-3)
TIMEOUT_S = 180

MODES = {"fsdp2": [], "expert-parallel": ["--expert-parallel"]}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _trainer_state(out: Path, step: int) -> dict:
    return json.loads((out / "checkpoints" / f"step-{step:010d}" / "trainer_state.json").read_text())


def _manifest(out: Path, step: int) -> dict:
    return json.loads((out / "checkpoints" / f"step-{step:010d}" / "manifest.json").read_text())


def _train(out: Path, corpus: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    if nproc == 1:
        done = run_train("--data", str(corpus), "--output", str(out), *ARGS, *extra, timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-5000:]
        return done
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        "-m", "moe_core.train", "--data", str(corpus), "--output", str(out), *ARGS, *extra,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=train_env(), cwd=REPO
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"torchrun with {nproc} gloo processes did not finish in {TIMEOUT_S} s: {str(e.stderr)[-3000:]}"
        )
    assert done.returncode == 0, done.stderr[-5000:]
    assert f"{nproc} process(es) on cpu" in done.stderr
    return done


def _copy_at_resume_step(straight: Path, dest: Path) -> Path:
    """The run folder as it was right after the step-4 checkpoint (metrics after it are dropped on resume)."""
    shutil.copytree(straight, dest)
    for later in (dest / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > RESUME_STEP:
            shutil.rmtree(later)
    shutil.rmtree(dest / "model")
    return dest


def _assert_continues_like(straight: Path, resumed: Path) -> None:
    a, b = _records(straight), _records(resumed)
    assert [r["step"] for r in b] == list(range(1, MAX_STEPS + 1))
    for ra, rb in zip(a, b, strict=True):
        assert rb["lr"] == ra["lr"], ra["step"]
        assert rb["loss"] == pytest.approx(ra["loss"], rel=LOSS_RTOL), ra["step"]
        assert rb["lm_loss"] == pytest.approx(ra["lm_loss"], rel=LOSS_RTOL), ra["step"]
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=GRAD_NORM_RTOL), ra["step"]
    # The sampler continued from the checkpoint's position, and the routing totals from its counts.
    sa, sb = _trainer_state(straight, MAX_STEPS), _trainer_state(resumed, MAX_STEPS)
    assert sb["sampler"] == sa["sampler"]
    assert sb["sampler"]["served"] == MAX_STEPS
    assert sb["routing_totals"] == sa["routing_totals"]
    wa = load_file(straight / "model" / "model.safetensors")
    wb = load_file(resumed / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    biases = [k for k in wa if k.endswith("gate.bias")]
    assert biases, "the model has no router bias to carry over"
    for name in wa:
        atol = BIAS_ATOL if name in biases else WEIGHT_ATOL
        assert (wa[name] - wb[name]).abs().max().item() <= atol, name


def _assert_router_bias_was_trained(out: Path) -> None:
    """The bias at the resumed step is not zero: carrying it over is something a broken load would miss."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(out / "checkpoints" / f"step-{RESUME_STEP:010d}")).read_metadata()
    assert any(k.startswith("model.") and k.endswith("gate.bias") for k in meta.state_dict_metadata)
    bias = load_file(out / "model" / "model.safetensors")["layers.1.ffn.gate.bias"]
    assert bias.abs().max().item() >= 1e-3


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("reshard-one") / "run"
    _train(out, corpus_dir, 1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_checkpoint_of_two_processes_resumes_on_one_and_continues_the_same_run(
    tmp_path: Path, corpus_dir: Path, mode: str
):
    straight = tmp_path / "two"
    _train(straight, corpus_dir, 2, *MODES[mode])
    assert _manifest(straight, RESUME_STEP)["world_size"] == 2
    _assert_router_bias_was_trained(straight)

    resumed = _copy_at_resume_step(straight, tmp_path / "two-then-one")
    done = _train(resumed, corpus_dir, 1)
    assert f"resumed from the checkpoint of step {RESUME_STEP}" in done.stderr
    assert _manifest(resumed, MAX_STEPS)["world_size"] == 1
    _assert_continues_like(straight, resumed)


@pytest.mark.slow
def test_checkpoint_of_one_process_resumes_on_two_with_expert_parallel_and_continues_the_same_run(
    tmp_path: Path, corpus_dir: Path, one_process: Path
):
    # Plain tensors in, DTensors out: the experts sharded by expert, everything else by FSDP2 (so this also
    # covers FSDP2 alone, left out to keep the module near a minute on two cores).
    assert _manifest(one_process, RESUME_STEP)["world_size"] == 1
    resumed = _copy_at_resume_step(one_process, tmp_path / "one-then-two")
    done = _train(resumed, corpus_dir, 2, "--expert-parallel")
    assert f"resumed from the checkpoint of step {RESUME_STEP}" in done.stderr
    assert "expert parallel: 8 routed experts per process" in done.stderr
    assert _manifest(resumed, MAX_STEPS)["world_size"] == 2
    _assert_continues_like(one_process, resumed)
