"""The tiered expert store: outputs do not depend on the GPU budget; policies, simulator and placement plan."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from moe_core.experts.placement import RoutingStatsError, parse_routing_stats, plan_placement
from moe_core.experts.policies import LFU, LRU, DecayedFrequency
from moe_core.experts.simulate import belady_factory, simulate
from moe_core.experts.store import offload_experts
from moe_core.experts.tiers import HostTier
from moe_core.serve.engine import EngineConfig, LLMEngine
from moe_core.serve.sequence import SamplingParams

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (6, 19, 30, 3)]


@pytest.mark.parametrize("policy", ["lru", "lfu", "decayed"])
def test_quarter_of_experts_resident_gives_outputs_identical_to_all_resident(tiny_model, policy):
    prompts = _prompts(tiny_model.config.vocab_size)
    full = LLMEngine(tiny_model, EngineConfig(max_num_seqs=2, block_size=4, num_blocks=64)).generate(
        prompts, GREEDY
    )
    offloaded = copy.deepcopy(tiny_model)
    # host memory holds no expert either: every miss goes down to the last tier
    store = offload_experts(
        offloaded, budget=0.25, tiers=[HostTier(0), HostTier(None)], policy=policy, prefetch_width=2
    )
    assert store.gpu_slots == 4 == tiny_model.config.n_routed_experts // 4
    engine = LLMEngine(offloaded, EngineConfig(max_num_seqs=2, block_size=4, num_blocks=64))
    assert engine.generate(prompts, GREEDY) == full
    assert store.counters["gpu"].misses > 0 and store.counters["gpu"].hits > 0
    x = torch.tensor([prompts[2]])
    with torch.no_grad():
        assert torch.equal(
            offloaded(x), tiny_model(x)
        )  # bit for bit, prefill routes to more experts than slots


def test_placement_plan_starts_the_most_routed_experts_hot():
    counts = parse_routing_stats(
        {"layers": {"1": [1, 9, 5, 7], "2": [4, 3, 2, 1]}}, first_moe_layer=1, n_experts=4
    )
    plan = plan_placement(counts, gpu_slots=2, host_slots=1, moe_layers=[1, 2], n_experts=4)
    assert plan.gpu == {1: [1, 3], 2: [0, 1]}
    assert plan.host == {1: [2], 2: [2]}
    assert parse_routing_stats({"expert_counts": [[1, 2, 3, 4]]}, first_moe_layer=1, n_experts=4) == {
        1: [1.0, 2.0, 3.0, 4.0]
    }
    written_by_training = {
        "steps": 10,
        "n_routed_experts": 4,
        "layers": [
            {"router": 0, "layer": 1, "tokens_per_expert": [3, 0, 0, 1]},
            {"router": 1, "layer": "mtp0", "tokens_per_expert": [1, 1, 1, 1]},
        ],
    }
    assert parse_routing_stats(written_by_training, first_moe_layer=1, n_experts=4) == {
        1: [3.0, 0.0, 0.0, 1.0]
    }
    with pytest.raises(RoutingStatsError, match="expected 4 counts"):
        parse_routing_stats({"1": [1, 2]}, first_moe_layer=1, n_experts=4)


def test_store_warms_from_the_plan_and_counts_hits_per_tier(tiny_model):
    model = copy.deepcopy(tiny_model)
    cfg = model.config
    counts = {layer: [float(e) for e in range(cfg.n_routed_experts)] for layer in range(1, cfg.n_layers)}
    plan = plan_placement(counts, 4, None, list(range(1, cfg.n_layers)), cfg.n_routed_experts)
    store = offload_experts(model, budget=0.25, tiers=[HostTier(None)], plan=plan)
    assert sorted(store.resident[1]) == [12, 13, 14, 15]  # the four most routed
    store.ensure(1, [15, 0])
    assert (store.counters["gpu"].hits, store.counters["gpu"].misses) == (1, 1)
    assert store.counters["host"].hits == 1 + 0  # the miss was served by host memory
    assert 0 in store.resident[1] and len(store.resident[1]) == 4


def test_policies_evict_as_their_names_say():
    def fed(policy):
        for t, key in enumerate(["a", "a", "a", "b", "c"]):
            policy.access(key, t)
        return policy

    assert fed(LRU()).victim(["a", "b", "c"], 5) == "a"  # least recent
    assert fed(LFU()).victim(["a", "b", "c"], 5) == "b"  # least frequent, older of the ties
    assert fed(LFU()).victim(["a", "c"], 5) == "c"
    # decayed frequency: with a long half-life it counts like LFU; with a short one a's old hits have faded
    assert fed(DecayedFrequency(half_life=1000.0)).victim(["a", "c"], 5) == "c"
    assert fed(DecayedFrequency(half_life=0.5)).victim(["a", "c"], 5) == "a"


def test_simulator_orders_policies_on_a_drifting_trace_and_belady_bounds_them():
    # half of routing follows experts popular everywhere (LFU's case), half each "document"'s own few experts,
    # which drift from prompt to prompt (LRU's case)
    rng = np.random.default_rng(0)
    popular = rng.dirichlet(np.full(32, 0.3))
    rows = []
    for _ in range(40):
        p = 0.5 * popular + 0.5 * rng.dirichlet(np.full(32, 0.2))
        rows += [rng.choice(32, 4, replace=False, p=p) for _ in range(100)]
    trace = np.array(rows)[:, None, :]
    results = {
        name: simulate(trace, 8, factory).hit_rate
        for name, factory in [
            ("lru", lambda _: LRU()),
            ("lfu", lambda _: LFU()),
            ("decayed", lambda _: DecayedFrequency(half_life=16)),
            ("belady", belady_factory(trace)),
        ]
    }
    assert results["belady"] >= max(results["lru"], results["lfu"], results["decayed"])
    assert results["decayed"] > results["lru"] and results["decayed"] > results["lfu"]
    with pytest.raises(ValueError, match="below top_k"):
        simulate(trace, 3, lambda _: LRU())
