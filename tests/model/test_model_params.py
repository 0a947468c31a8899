"""Parameter counts from the meta-device model, and `moectl model params`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moe_core.cli_model import app
from moe_core.config import ModelConfig
from moe_core.params import count_mtp_params, count_params


@pytest.mark.parametrize(
    "preset, total_b, active_b, tolerance",
    [("deepseek-v3", 671, 37, 0.02), ("mini", 1.23, 0.16, 0.02), ("lite", 15.7, 2.45, 0.02)],
)
def test_preset_counts_match_the_published_sizes(preset, total_b, active_b, tolerance):
    counts = count_params(preset)
    assert counts["total"] / 1e9 == pytest.approx(total_b, rel=tolerance)
    assert counts["active"] / 1e9 == pytest.approx(active_b, rel=tolerance)


def test_active_counts_only_top_k_routed_experts_and_one_embedding_row():
    base = count_params(ModelConfig.from_preset("tiny", n_activated_experts=2))
    more = count_params(ModelConfig.from_preset("tiny", n_activated_experts=3))
    c = ModelConfig.from_preset("tiny")
    per_expert = 3 * c.dim * c.moe_inter_dim
    assert more["total"] == base["total"]
    assert more["active"] - base["active"] == c.n_moe_layers * per_expert
    wider_vocab = count_params(ModelConfig.from_preset("tiny", vocab_size=c.vocab_size + 10))
    assert wider_vocab["active"] - count_params("tiny")["active"] == 10 * c.dim  # head rows only


def test_mtp_is_excluded_from_the_total():
    with_mtp, without = count_params("tiny"), count_params(ModelConfig.from_preset("tiny", mtp_depth=0))
    assert with_mtp == without
    assert count_mtp_params("tiny") > 0


def test_cli_prints_json_counts():
    result = CliRunner().invoke(app, ["params", "--preset", "mini", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == count_params("mini")


def test_cli_rejects_an_unknown_preset():
    result = CliRunner().invoke(app, ["params", "--preset", "nope"])
    assert result.exit_code == 2
    assert "presets: tiny, mini, lite, deepseek-v3" in result.output
