"""The model artifact and the cold expert tier in S3 (a real moto server through AWS_ENDPOINT_URL)."""

from __future__ import annotations

import boto3
import pytest
import torch

from moe_core.experts.tiers import S3Tier
from moe_core.serve.loader import ModelNotFound, resolve_model_dir


def _bucket(name: str) -> None:
    boto3.client("s3").create_bucket(Bucket=name)


def test_model_artifact_loads_from_s3(s3_endpoint, tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_MODEL_CACHE", str(tmp_path / "cache"))
    _bucket("models")
    s3 = boto3.client("s3")
    for f in tiny_artifact.iterdir():
        s3.upload_file(str(f), "models", f"run-1/{f.name}")
    local = resolve_model_dir("s3://models/run-1/")
    for f in tiny_artifact.iterdir():
        assert (local / f.name).read_bytes() == f.read_bytes()
    with pytest.raises(ModelNotFound, match="tokenizer.json"):
        s3.delete_object(Bucket="models", Key="run-1/tokenizer.json")
        resolve_model_dir("s3://models/run-1/")  # every load reads S3 again: a missing file is an error


def test_s3_tier_round_trips_experts_and_misses_absent_ones(s3_endpoint):
    _bucket("experts")
    tier = S3Tier("experts", "run-1/experts")
    w = {n: torch.randn(8, 4).to(torch.bfloat16) for n in ("w1", "w2", "w3")}
    tier.put((2, 5), w)
    back = tier.get((2, 5))
    assert all(torch.equal(back[n], w[n]) for n in w)
    assert tier.get((2, 6)) is None
