"""The Redis tier (ElastiCache) against a real Redis server: exact round trips, and serving from it."""

from __future__ import annotations

import copy
import uuid

import pytest
import torch

from moe_core.experts.store import offload_experts
from moe_core.experts.tiers import HostTier, RedisTier
from moe_core.serve.engine import EngineConfig, LLMEngine
from moe_core.serve.sequence import SamplingParams

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_tier(redis_url):
    tier = RedisTier(redis_url, prefix=f"test-{uuid.uuid4().hex}")
    yield tier
    tier.delete_all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_redis_tier_round_trips_expert_weights_bit_exactly(redis_tier, dtype):
    g = torch.Generator().manual_seed(0)
    weights = {n: (torch.randn(64, 32, generator=g) * 1e3).to(dtype) for n in ("w1", "w2", "w3")}
    weights["w1"][0, 0] = float("nan")
    weights["w2"][0, 0] = float("-inf")
    redis_tier.put((3, 7), weights)
    back = redis_tier.get((3, 7))
    for n, w in weights.items():
        assert back[n].dtype == dtype and back[n].shape == w.shape
        assert back[n].contiguous().view(torch.uint8).tolist() == w.contiguous().view(torch.uint8).tolist()
    assert redis_tier.get((3, 8)) is None


def test_serving_from_redis_with_a_quarter_resident_matches_all_resident(tiny_model, redis_tier):
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, tiny_model.config.vocab_size, (n,), generator=g).tolist() for n in (9, 21)]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    full = LLMEngine(tiny_model, EngineConfig(max_num_seqs=2, block_size=4, num_blocks=64)).generate(
        prompts, params
    )
    model = copy.deepcopy(tiny_model)
    store = offload_experts(model, budget=0.25, tiers=[HostTier(2), redis_tier], policy="decayed")
    assert len(list(redis_tier.client.scan_iter(match=f"{redis_tier.prefix}:*"))) == 3 * 16  # all seeded
    out = LLMEngine(model, EngineConfig(max_num_seqs=2, block_size=4, num_blocks=64)).generate(
        prompts, params
    )
    assert out == full
    assert store.counters["redis"].hits > 0  # host memory (2 experts) could not hold the misses
