"""The engine on CPU with the tiny model: continuous batching, the paged latent cache and the prefix cache."""

from __future__ import annotations

import torch

from moe_core.serve.engine import EngineConfig, LLMEngine
from moe_core.serve.paged_cache import PagedLatentCache
from moe_core.serve.sequence import SamplingParams
from tests.serving.conftest import reference_greedy

GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)


def _prompts(vocab: int, lengths: tuple[int, ...], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def test_continuous_batched_greedy_equals_full_recompute_reference(tiny_model):
    prompts = _prompts(tiny_model.config.vocab_size, (5, 17, 33, 2, 40, 9))
    # 3 running at most: later prompts join the batch while earlier ones are mid-decode
    engine = LLMEngine(tiny_model, EngineConfig(max_num_seqs=3, block_size=4, num_blocks=128))
    outputs = engine.generate(prompts, GREEDY)
    assert max(engine.stats.decode_batch_sizes) == 3
    assert engine.stats.prefill_steps >= 2  # the later prompts were admitted after decoding had started
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out == reference_greedy(tiny_model, prompt, GREEDY.max_tokens)


def test_preempted_sequences_recompute_to_the_same_output(tiny_model):
    prompts = _prompts(tiny_model.config.vocab_size, (12, 14, 10, 13))
    # 16 blocks of 4 tokens cannot hold four 22-token sequences at once: the scheduler must preempt
    engine = LLMEngine(tiny_model, EngineConfig(max_num_seqs=4, block_size=4, num_blocks=16))
    outputs = engine.generate(prompts, GREEDY)
    assert engine.scheduler.num_preemptions > 0
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out == reference_greedy(tiny_model, prompt, GREEDY.max_tokens)


def test_shared_prefix_hits_the_prefix_cache_and_gives_identical_output(tiny_model):
    vocab = tiny_model.config.vocab_size
    prefix = _prompts(vocab, (24,), seed=3)[0]
    first, second = prefix + [7, 8, 9], prefix + [7, 8, 9]
    engine = LLMEngine(tiny_model, EngineConfig(max_num_seqs=2, block_size=8, num_blocks=64))
    out_first = engine.generate([first], GREEDY)[0]
    computed_before = engine.stats.prompt_tokens_computed
    seq = engine.add_request(second, GREEDY)
    while engine.has_work():
        engine.step()
    assert seq.num_cached_prompt_tokens == 24  # three full blocks of 8 from the first request
    assert engine.stats.prompt_tokens_computed - computed_before == len(second) - 24
    assert engine.block_manager.stats.hits == 3
    assert seq.output_token_ids == out_first == reference_greedy(tiny_model, second, GREEDY.max_tokens)


def test_latent_cache_bytes_per_token_are_kv_lora_rank_plus_rope_dim_times_layers_times_dtype(tiny_model):
    cfg = tiny_model.config
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        cache = PagedLatentCache(cfg, num_blocks=10, block_size=16, dtype=dtype)
        expected = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.n_layers * size
        assert PagedLatentCache.bytes_per_token(cfg, dtype) == expected
        # every byte the cache allocates is latent: slots (plus one scratch slot) x the per-token bytes
        assert cache.nbytes == (10 * 16 + 1) * expected
    # and the MHA cache of the same shape would hold 2 * heads * head dims per token per layer
    assert cfg.kv_lora_rank + cfg.qk_rope_head_dim < 2 * cfg.n_heads * cfg.qk_head_dim


def test_seeded_sampling_is_reproducible_and_differs_between_seeds(tiny_model):
    prompt = _prompts(tiny_model.config.vocab_size, (6,))[0]
    engine = LLMEngine(tiny_model, EngineConfig(max_num_seqs=4, block_size=4, num_blocks=64))

    def run(seed):
        return engine.generate(
            [prompt], SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=seed, ignore_eos=True)
        )[0]

    assert run(5) == run(5)
    assert run(5) != run(6)
