"""Fixtures of the training worker's tests: a small real corpus (standard library source) and CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Small enough that a tiny run prepares its data in well under a second.
CORPUS_BYTES = 300_000
TINY_ARGS = ["--seq-len", "32", "--batch-size", "4", "--no-progress", "--lr", "3e-3"]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder with manifest.json: a deterministic slice of the standard library's .py files."""
    from moe_core.data.corpus import write_stdlib_dataset

    d = tmp_path_factory.mktemp("corpus")
    write_stdlib_dataset(d, CORPUS_BYTES, name="stdlib-test")
    return d


def train_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # One intra-op thread: CPU results then depend on nothing but the inputs (and the test stays cheap).
    env["OMP_NUM_THREADS"] = "1"
    return env


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "moe_core.train", *args]


def run_train(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env or train_env(), cwd=REPO
    )
