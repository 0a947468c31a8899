"""Save/load as config.json + model.safetensors: exact round trip and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from moe_core.artifact import ArtifactError, load_model, save_model
from moe_core.config import ModelConfig
from moe_core.model import Transformer


def test_saved_model_loads_back_with_identical_outputs_and_router_bias(tiny, tmp_path):
    model = Transformer(tiny).eval()
    model.routers()[0].bias.add_(torch.linspace(-0.1, 0.1, tiny.n_routed_experts))
    save_model(model, tiny, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = load_model(tmp_path).eval()
    assert loaded.config == tiny
    assert loaded.expert_load().sum() == 0  # the counters are not in the file and start from zero
    tokens = torch.randint(0, tiny.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
    assert torch.equal(loaded.routers()[0].bias, model.routers()[0].bias)


def test_load_with_dtype_keeps_router_bias_and_rope_in_fp32(tiny, tmp_path):
    save_model(Transformer(tiny), tiny, tmp_path)
    model = load_model(tmp_path, dtype=torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16
    assert model.routers()[0].bias.dtype == torch.float32
    assert model.rope.cos.dtype == torch.float32


def test_missing_weights_file_is_a_clear_error(tiny, tmp_path):
    save_model(Transformer(tiny), tiny, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="no model.safetensors"):
        load_model(tmp_path)


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no config.json"):
        load_model(tmp_path)


def test_weights_that_do_not_match_the_config_are_rejected(tiny, tmp_path):
    save_model(Transformer(tiny), tiny, tmp_path)
    bigger = ModelConfig.from_preset("tiny", dim=96)
    (tmp_path / "config.json").write_text(json.dumps(bigger.to_dict()))
    with pytest.raises(ArtifactError, match="does not match"):
        load_model(tmp_path)
