"""Checkpoints: the manifest is the only completion marker; a damaged newest checkpoint is passed over."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import torch

from moe_control.checkpoints import (
    CheckpointManifest,
    LocalCheckpointStore,
    S3CheckpointStore,
    find_latest_complete_checkpoint,
    find_latest_complete_checkpoint_s3,
    prune_checkpoints,
    step_dir_name,
)
from moe_core.config import ModelConfig
from moe_core.model import Transformer
from moe_core.train.checkpoint import CheckpointManager


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=256, n_layers=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (2, 8))
    model.loss(x, x).loss.backward()
    opt.step()
    opt.zero_grad()
    model.update_router_bias()
    return model, opt


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    p = tmp_path / "tokenizer.json"
    p.write_text('{"stand-in": "the manager copies this file verbatim"}')
    return p


def _save_steps(manager: CheckpointManager, steps, tokenizer_file: Path):
    model, opt = _model_and_optimizer()
    for step in steps:
        manager.save(step, model, opt, {"step": step}, tokenizer_file, {"loss": 1.0 / step})
    manager.wait()
    return model, opt


def _largest_file(manifest: CheckpointManifest) -> str:
    return max(manifest.files, key=lambda f: f.size).path


def test_step_folders_sort_in_step_order():
    names = [step_dir_name(s) for s in (5, 40, 300, 1_000_000)]
    assert sorted(names) == names


def test_newest_complete_checkpoint_is_found_and_a_manifestless_one_is_skipped(
    tmp_path: Path, tokenizer_file
):
    store = LocalCheckpointStore(tmp_path / "ckpt")
    _save_steps(CheckpointManager(store, run_id="r", work_dir=tmp_path, keep=5), [2, 4], tokenizer_file)
    (store.step_path(4) / "manifest.json").unlink()  # as if killed before the manifest was written
    search = find_latest_complete_checkpoint(store)
    assert search.manifest.step == 2
    assert [(s.step, "no manifest" in s.reason) for s in search.skipped] == [(4, True)]


def test_truncated_newest_checkpoint_is_skipped(tmp_path: Path, tokenizer_file):
    store = LocalCheckpointStore(tmp_path / "ckpt")
    mgr = CheckpointManager(store, run_id="r", work_dir=tmp_path, keep=5)
    _save_steps(mgr, [2, 4], tokenizer_file)
    manifest = find_latest_complete_checkpoint(store).manifest
    victim = store.step_path(4) / _largest_file(manifest)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert mgr.find_resumable().step == 2
    assert "truncated" in mgr.skipped[0].reason


def test_checkpoint_failing_its_checksum_is_skipped_and_the_previous_one_loaded(
    tmp_path: Path, tokenizer_file
):
    store = LocalCheckpointStore(tmp_path / "ckpt")
    mgr = CheckpointManager(store, run_id="r", work_dir=tmp_path, keep=5)
    model_a, _ = _model_and_optimizer(seed=0)
    opt_a = torch.optim.AdamW(model_a.parameters(), lr=1e-3)
    mgr.save(2, model_a, opt_a, {"step": 2}, tokenizer_file, {})
    model_b, opt_b = _model_and_optimizer(seed=1)
    mgr.save(4, model_b, opt_b, {"step": 4}, tokenizer_file, {})
    manifest = find_latest_complete_checkpoint(store).manifest
    victim = store.step_path(4) / _largest_file(manifest)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    victim.write_bytes(bytes(data))

    fresh, fresh_opt = _model_and_optimizer(seed=2)
    point = mgr.resume_point()
    assert point[0].step == 2
    assert any(s.step == 4 and "sha256" in s.reason for s in mgr.skipped)
    assert mgr.load(point[0], point[1], fresh, fresh_opt) == {"step": 2}
    for (name, a), b in zip(model_a.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not store.step_path(4).exists()  # stale folders after the resumed step are removed


def test_unreadable_or_mismatched_manifest_is_skipped(tmp_path: Path, tokenizer_file):
    store = LocalCheckpointStore(tmp_path / "ckpt")
    _save_steps(CheckpointManager(store, run_id="r", work_dir=tmp_path, keep=5), [2, 4, 6], tokenizer_file)
    (store.step_path(6) / "manifest.json").write_text('{"step": 6, "fil')
    raw = json.loads((store.step_path(4) / "manifest.json").read_text())
    (store.step_path(4) / "manifest.json").write_text(json.dumps({**raw, "step": 99}))
    search = find_latest_complete_checkpoint(store)
    assert search.manifest.step == 2
    assert [s.step for s in search.skipped] == [6, 4]


def test_retention_keeps_the_newest_n_and_never_an_incomplete_newer_one(tmp_path: Path, tokenizer_file):
    store = LocalCheckpointStore(tmp_path / "ckpt")
    _save_steps(CheckpointManager(store, run_id="r", work_dir=tmp_path, keep=2), [1, 2, 3, 4], tokenizer_file)
    assert store.steps() == [3, 4]
    (store.step_path(9)).mkdir()  # an in-progress save of a later step
    (store.step_path(9) / "__0_0.distcp").write_bytes(b"partial")
    assert prune_checkpoints(store, 2) == []
    assert store.steps() == [3, 4, 9]


def test_async_save_writes_the_manifest_only_after_the_data(tmp_path: Path, tokenizer_file):
    store = LocalCheckpointStore(tmp_path / "ckpt")
    mgr = CheckpointManager(store, run_id="r", work_dir=tmp_path, keep=3, async_save=True)
    model, opt = _save_steps(mgr, [5], tokenizer_file)
    manifest = find_latest_complete_checkpoint(store).manifest
    assert manifest.step == 5 and manifest.metrics == {"loss": 0.2}
    paths = {f.path for f in manifest.files}
    assert {".metadata", "__0_0.distcp", "trainer_state.json", "tokenizer.json", "rng/rank-00000.pt"} <= paths


def test_s3_checkpoints_resume_from_the_newest_complete_one(tmp_path: Path, tokenizer_file, s3_endpoint: str):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="ckpt-s3")
    store = S3CheckpointStore(s3, "ckpt-s3", "checkpoints/run-1")
    mgr = CheckpointManager(store, run_id="run-1", work_dir=tmp_path, keep=2, async_save=True)
    _save_steps(mgr, [3, 6, 9], tokenizer_file)
    assert store.steps() == [6, 9]  # retention in S3 too
    # A half-uploaded step 12: data but no manifest. The recovery Lambda's search passes over it.
    s3.put_object(Bucket="ckpt-s3", Key="checkpoints/run-1/step-0000000012/__0_0.distcp", Body=b"half")
    search = find_latest_complete_checkpoint_s3(s3, "s3://ckpt-s3/checkpoints/run-1")
    assert search.manifest.step == 9 and search.skipped[0].step == 12
    assert search.location == "s3://ckpt-s3/checkpoints/run-1/step-0000000009/"
    # A corrupted object of step 9 (same size) is caught by the worker's checksum after download.
    manifest = search.manifest
    key = f"checkpoints/run-1/step-0000000009/{_largest_file(manifest)}"
    body = bytearray(s3.get_object(Bucket="ckpt-s3", Key=key)["Body"].read())
    body[-1] ^= 1
    s3.put_object(Bucket="ckpt-s3", Key=key, Body=bytes(body))
    fresh = CheckpointManager(store, run_id="run-1", work_dir=tmp_path / "node2", keep=2)
    model, opt = _model_and_optimizer(seed=3)
    point = fresh.resume_point()
    assert point[0].step == 6
    assert fresh.load(point[0], point[1], model, opt) == {"step": 6}
    assert {s.step for s in fresh.skipped} == {12, 9}
