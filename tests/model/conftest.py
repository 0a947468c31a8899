"""Fixtures for the model-core tests: small fp32 configs built from the `tiny` preset."""

from __future__ import annotations

import pytest
import torch

from moe_core.config import ModelConfig


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def tiny() -> ModelConfig:
    return ModelConfig.from_preset("tiny")
