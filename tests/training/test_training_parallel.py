"""FSDP2 over two CPU processes (gloo) trains the same model as one process, within a stated tolerance."""

from __future__ import annotations

import json
import subprocess
import sys
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


@pytest.mark.slow
def test_fsdp2_on_two_gloo_processes_matches_one_process(tmp_path: Path, corpus_dir: Path):
    one = tmp_path / "one"
    done = run_train("--data", str(corpus_dir), "--output", str(one), *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]

    two = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        "-m", "moe_core.train", "--data", str(corpus_dir), "--output", str(two), *ARGS,
    ]  # fmt: skip
    try:
        fsdp = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=train_env(), cwd=REPO)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun with 2 gloo processes did not finish in 240 s: {str(e.stderr)[-3000:]}")
    assert fsdp.returncode == 0, fsdp.stderr[-5000:]
    assert "2 process(es) on cpu" in fsdp.stderr

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

    # The sharded checkpoint lists both ranks' files; the manifest was written by rank 0 from their parts.
    manifest = json.loads((two / "checkpoints" / "step-0000000008" / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert manifest["world_size"] == 2
    assert {"__0_0.distcp", "__1_0.distcp", "rng/rank-00000.pt", "rng/rank-00001.pt", ".metadata"} <= paths
