"""The config type: presets by name, validation, JSON round trip."""

from __future__ import annotations

import pytest

from moe_core.config import PRESETS, ConfigError, ModelConfig


def test_every_preset_round_trips_through_json():
    for name, config in PRESETS.items():
        assert ModelConfig.from_json(config.to_json()) == config, name
        assert ModelConfig.from_dict(config.to_dict()) == config, name


def test_from_preset_applies_overrides_and_leaves_the_preset_alone():
    config = ModelConfig.from_preset("mini", mtp_depth=0, max_seq_len=2048)
    assert config.mtp_depth == 0 and config.max_seq_len == 2048
    assert PRESETS["mini"].mtp_depth == 1


def test_unknown_preset_error_lists_the_presets():
    with pytest.raises(ConfigError, match="tiny, mini, lite, deepseek-v3"):
        ModelConfig.from_preset("huge")


def test_unknown_field_in_json_is_rejected():
    data = PRESETS["tiny"].to_dict() | {"n_experts": 4}
    with pytest.raises(ConfigError, match="n_experts"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_routed_experts": 15}, "split evenly"),
        ({"n_limited_groups": 5}, "n_limited_groups"),
        ({"n_activated_experts": 9}, "n_activated_experts"),
        ({"qk_rope_head_dim": 7}, "even"),
        ({"mtp_depth": 2}, "mtp_depth"),
        ({"n_dense_layers": 9}, "n_dense_layers"),
    ],
)
def test_invalid_configs_are_rejected_with_a_named_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_preset("tiny", **overrides)


def test_presets_match_the_documented_dimensions():
    mini, lite, v3 = PRESETS["mini"], PRESETS["lite"], PRESETS["deepseek-v3"]
    assert (mini.dim, mini.n_layers, mini.n_routed_experts, mini.n_activated_experts) == (1024, 12, 128, 8)
    assert (mini.q_lora_rank, mini.kv_lora_rank, mini.n_expert_groups, mini.n_limited_groups) == (
        384,
        256,
        8,
        4,
    )
    assert (lite.q_lora_rank, lite.n_routed_experts, lite.n_activated_experts, lite.n_shared_experts) == (
        0,
        64,
        6,
        2,
    )
    assert v3.latent_cache_dim == 576
