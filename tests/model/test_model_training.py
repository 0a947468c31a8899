"""The training API: losses, expert-load counters, the bias update, and learning at all."""

from __future__ import annotations

import torch

from moe_core.config import ModelConfig
from moe_core.model import Transformer


def test_loss_reports_lm_mtp_and_balance_parts_that_sum_to_the_total():
    config = ModelConfig.from_preset("tiny", seq_aux_loss_alpha=1e-2)
    model = Transformer(config).train()
    tokens = torch.randint(0, config.vocab_size, (2, 16))
    out = model.loss(tokens, tokens.roll(-1, dims=1))
    assert out.mtp_loss is not None and out.balance_loss is not None
    expected = out.lm_loss + config.mtp_loss_weight * out.mtp_loss + out.balance_loss
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    assert model.routers()[0].weight.grad is not None  # the balance loss and weights reach the router


def test_mtp_off_gives_no_mtp_loss(tiny):
    model = Transformer(ModelConfig.from_preset("tiny", mtp_depth=0))
    tokens = torch.randint(0, tiny.vocab_size, (2, 8))
    out = model.loss(tokens, tokens)
    assert out.mtp_loss is None and out.balance_loss is None
    assert torch.equal(out.loss, out.lm_loss)


def test_expert_load_counts_every_routed_slot_and_resets_on_bias_update(tiny):
    model = Transformer(tiny)
    tokens = torch.randint(0, tiny.vocab_size, (2, 16))
    model.loss(tokens, tokens)
    load = model.expert_load()
    n_routers = tiny.n_moe_layers + tiny.mtp_depth
    assert load.shape == (n_routers, tiny.n_routed_experts)
    assert (
        load[: tiny.n_moe_layers].sum(dim=1).tolist()
        == [2 * 16 * tiny.n_activated_experts] * tiny.n_moe_layers
    )
    assert load[-1].sum() == 2 * 15 * tiny.n_activated_experts  # the MTP block sees T-1 positions
    model.update_router_bias()
    assert model.expert_load().sum() == 0


def test_tiny_model_overfits_one_small_batch(tiny):
    model = Transformer(tiny).train()
    tokens = torch.randint(0, tiny.vocab_size, (4, 32))
    targets = tokens.roll(-1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for _ in range(30):
        out = model.loss(tokens, targets)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_router_bias()
        first = first if first is not None else out.lm_loss.item()
    assert first > 7.0
    assert out.lm_loss.item() < 0.5


def test_initialisation_follows_the_torchtitan_deepseek_v3_scheme():
    config = ModelConfig.from_preset("tiny", dim=256, vocab_size=4096)
    model = Transformer(config)
    assert abs(model.embed.weight.std().item() - 1.0) < 0.02
    assert abs(model.head.weight.std().item() - config.dim**-0.5) < 0.1 * config.dim**-0.5
    last = model.layers[-1]
    depth_std = 0.02 / (2 * config.n_layers) ** 0.5
    assert abs(last.attn.wo.weight.std().item() - depth_std) < 0.1 * depth_std
    assert abs(last.attn.wkv_a.weight.std().item() - 0.02) < 0.002
    assert torch.equal(last.ffn.gate.bias, torch.zeros(config.n_routed_experts))
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in (last.attn_norm, last.attn.kv_norm))
