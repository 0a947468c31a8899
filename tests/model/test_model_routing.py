"""The router (sigmoid, group-limited top-k, selection-only bias) and the routed experts' two paths."""

from __future__ import annotations

import pytest
import torch

from moe_core.config import ModelConfig
from moe_core.model import RoutedExperts, Router, Transformer


def _router(**overrides) -> Router:
    config = ModelConfig.from_preset("tiny", **overrides)
    router = Router(config)
    torch.nn.init.normal_(router.weight, std=0.5)
    return router


def test_router_picks_exactly_top_k_distinct_experts_inside_the_kept_groups():
    router = _router(n_routed_experts=16, n_expert_groups=4, n_limited_groups=2, n_activated_experts=3)
    x = torch.randn(256, router.weight.shape[1])
    weights, idx = router(x)
    assert idx.shape == (256, 3) and weights.shape == (256, 3)
    assert all(len(set(row)) == 3 for row in idx.tolist())
    scores = torch.sigmoid(x @ router.weight.T)
    group_scores = scores.view(256, 4, 4).topk(2, dim=-1).values.sum(-1)
    kept = group_scores.topk(2, dim=-1).indices
    chosen_groups = idx // 4
    assert all(set(c) <= set(k) for c, k in zip(chosen_groups.tolist(), kept.tolist(), strict=True))
    # within the kept groups, the chosen experts are the k best
    masked = scores.view(256, 4, 4).clone()
    drop = torch.ones(256, 4, dtype=torch.bool).scatter_(1, kept, False)
    masked[drop] = -1.0
    assert torch.equal(idx.sort(dim=1).values, masked.flatten(1).topk(3, dim=-1).indices.sort(dim=1).values)


def test_weights_are_normalised_unbiased_scores_times_route_scale():
    router = _router()
    x = torch.randn(64, router.weight.shape[1])
    weights, idx = router(x)
    scores = torch.sigmoid(x @ router.weight.T)
    expected = scores.gather(1, idx)
    expected = expected / expected.sum(-1, keepdim=True) * router.route_scale
    assert torch.allclose(weights, expected, atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.full((64,), router.route_scale), atol=1e-5)


def test_bias_moves_the_choice_but_not_the_weights():
    router = _router(n_expert_groups=1, n_limited_groups=1)
    x = torch.randn(128, router.weight.shape[1])
    _, idx_before = router(x)
    favourite = 5
    router.bias[favourite] = 10.0  # huge: expert 5 is chosen for every token
    weights, idx = router(x)
    assert (idx == favourite).any(dim=1).all()
    assert not torch.equal(idx, idx_before)
    scores = torch.sigmoid(x @ router.weight.T)
    unbiased = scores.gather(1, idx)
    assert torch.allclose(weights, unbiased / unbiased.sum(-1, keepdim=True) * router.route_scale, atol=1e-6)


def _experts_and_inputs(dtype):
    experts = RoutedExperts(n_experts=8, dim=32, inter_dim=16).to(dtype)
    for w in (experts.w1, experts.w2, experts.w3):
        torch.nn.init.normal_(w, std=0.2)
    x = torch.randn(50, 32, dtype=dtype)
    idx = torch.stack([torch.randperm(8)[:3] for _ in range(50)])
    weights = torch.rand(50, 3)
    return experts, x, idx, weights


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_grouped_gemm_and_per_expert_loop_give_the_same_output_and_grads(dtype, atol):
    experts, x, idx, weights = _experts_and_inputs(dtype)
    idx[idx == 6] = 7  # expert 6 gets no tokens: an empty group must work in both paths
    outs, grads = [], []
    for grouped in (True, False):
        experts.use_grouped_mm = grouped
        experts.zero_grad()
        xg = x.clone().requires_grad_()
        y = experts(xg, idx, weights)
        y.backward(torch.ones_like(y))
        outs.append(y.float())
        grads.append((xg.grad.float(), experts.w1.grad.float(), experts.w2.grad.float()))
    assert torch.allclose(outs[0], outs[1], atol=atol, rtol=atol)
    for a, b in zip(grads[0], grads[1], strict=True):
        assert torch.allclose(a, b, atol=atol * 4, rtol=atol)


def test_experts_equal_a_token_by_token_reference():
    experts, x, idx, weights = _experts_and_inputs(torch.float32)
    experts.use_grouped_mm = True
    y = experts(x, idx, weights)
    silu = torch.nn.functional.silu
    for t in range(0, 50, 7):
        ref = sum(
            weights[t, j] * (experts.w2[e] @ (silu(experts.w1[e] @ x[t]) * (experts.w3[e] @ x[t])))
            for j, e in enumerate(idx[t].tolist())
        )
        assert torch.allclose(y[t], ref, atol=1e-5)


def test_expert_gradients_equal_those_of_a_token_by_token_reference():
    experts, x, idx, weights = _experts_and_inputs(torch.float32)
    silu = torch.nn.functional.silu
    grads = []
    for reference in (False, True):
        experts.zero_grad()
        xg = x.clone().requires_grad_()
        if reference:
            y = torch.stack(
                [
                    sum(
                        weights[t, j]
                        * (experts.w2[e] @ (silu(experts.w1[e] @ xg[t]) * (experts.w3[e] @ xg[t])))
                        for j, e in enumerate(idx[t].tolist())
                    )
                    for t in range(x.shape[0])
                ]
            )
        else:
            experts.use_grouped_mm = True
            y = experts(xg, idx, weights)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        grads.append((xg.grad, experts.w1.grad.clone(), experts.w2.grad.clone(), experts.w3.grad.clone()))
    for got, want in zip(grads[0], grads[1], strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_bias_update_lowers_expert_load_imbalance_on_skewed_input():
    config = ModelConfig.from_preset(
        "tiny", n_layers=2, n_dense_layers=1, mtp_depth=0, bias_update_speed=1e-2
    )
    model = Transformer(config).eval()
    router = model.routers()[0]
    with torch.no_grad():
        router.weight.add_(torch.linspace(0, 2.0, config.n_routed_experts)[:, None] * 0.05)  # skew
    skewed = torch.randint(0, 64, (4, 64))  # a narrow slice of the vocabulary: correlated hidden states

    def imbalance() -> float:
        load = model.expert_load()[0].float()
        return (load.max() / load.mean()).item()

    ratios = []
    with torch.no_grad():
        for _ in range(40):
            model(skewed)
            ratios.append(imbalance())
            model.update_router_bias()
    assert ratios[0] > 2.0
    assert sum(ratios[-5:]) / 5 < 0.6 * ratios[0]


def test_sequence_balance_loss_matches_deepseek_v3_formula():
    router = _router(seq_aux_loss_alpha=0.1)
    router.train()
    bsz, seqlen, n_exp, k = 3, 10, router.n_experts, router.topk
    x = torch.randn(bsz * seqlen, router.weight.shape[1])
    _, idx = router(x, (bsz, seqlen))
    scores = torch.sigmoid(x @ router.weight.T).view(bsz, seqlen, n_exp)
    expected = 0.0
    for b in range(bsz):
        chosen = idx.view(bsz, seqlen, k)[b]
        f = torch.tensor([(chosen == i).any(dim=1).sum().item() for i in range(n_exp)]) * n_exp / (k * seqlen)
        p = (scores[b] / scores[b].sum(dim=-1, keepdim=True)).mean(dim=0)
        expected += 0.1 * (f * p).sum() / bsz
    assert torch.allclose(router.aux_loss, expected, atol=1e-6)
    router.eval()
    router(x, (bsz, seqlen))
    assert router.aux_loss is None  # only in training
