"""The serving fast paths (`fast_decode`: fused projections, kept derived weights, grouped experts over views)
against the model's reference paths: same greedy tokens, same expert outputs, weights changed in place seen."""

from __future__ import annotations

import pytest
import torch

from moe_core.config import ModelConfig
from moe_core.model import RoutedExperts, Transformer, grouped_mm_available
from moe_core.serve.engine import EngineConfig, LLMEngine
from moe_core.serve.sequence import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset("tiny", vocab_size=512, mtp_depth=0, **overrides)).eval()


def _generate(model: Transformer, prompts: list[list[int]], fast: bool) -> list[list[int]]:
    engine = LLMEngine(model, EngineConfig(max_num_seqs=3, block_size=4, num_blocks=96, fast_decode=fast))
    return engine.generate(prompts, GREEDY)


@pytest.mark.parametrize("grouped", [False, True], ids=["expert-loop", "grouped-mm"])
@pytest.mark.parametrize("q_lora_rank", [0, 64], ids=["q-full", "q-low-rank"])
def test_fast_decode_paths_give_the_reference_paths_greedy_tokens(grouped, q_lora_rank):
    if grouped and not grouped_mm_available():
        pytest.skip("torch._grouped_mm not in this torch")
    model = _model(q_lora_rank=q_lora_rank)
    model.set_expert_path(grouped)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (5, 19, 11, 3)]
    reference = _generate(model, prompts, fast=False)
    assert _generate(model, prompts, fast=True) == reference


@pytest.mark.parametrize("grouped", [False, True], ids=["expert-loop", "grouped-mm"])
def test_fast_routed_experts_match_the_sort_and_scatter_reference(grouped):
    if grouped and not grouped_mm_available():
        pytest.skip("torch._grouped_mm not in this torch")
    torch.manual_seed(0)
    experts = RoutedExperts(8, 32, 16)
    for w in (experts.w1, experts.w2, experts.w3):
        torch.nn.init.normal_(w, std=0.2)
    experts.use_grouped_mm = grouped
    x = torch.randn(5, 32)
    idx = torch.stack([torch.randperm(8)[:3] for _ in range(5)])
    idx[1] = idx[0]  # two tokens on the same experts
    weights = torch.rand(5, 3)
    with torch.inference_mode():
        reference = experts(x, idx, weights)
        experts.fast_decode = True
        fast = experts(x, idx, weights)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


def test_fast_paths_see_weights_loaded_after_the_first_step():
    model = _model()
    torch.manual_seed(1)
    changed = Transformer(model.config).eval()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (6, 9)]
    _generate(model, prompts, fast=True)  # builds the kept concatenations and fp32 copies
    model.load_state_dict(changed.state_dict())  # in place: same storage, new version counters
    assert _generate(model, prompts, fast=True) == _generate(changed, prompts, fast=False)
