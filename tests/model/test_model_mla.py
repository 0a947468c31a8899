"""Multi-Head Latent Attention: the absorbed (cached) path equals the naive one, and causality holds."""

from __future__ import annotations

import pytest
import torch

from moe_core.model import KVLatentCache, LatentCache, PositionError, Transformer


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("q_lora_rank", [64, 0])
def test_absorbed_decode_with_cache_equals_naive_full_forward(tiny, q_lora_rank):
    config = tiny.__class__.from_preset("tiny", q_lora_rank=q_lora_rank)
    model = Transformer(config).eval()
    tokens = torch.randint(0, config.vocab_size, (3, 24))
    with torch.no_grad():
        full = model(tokens)  # naive path, no cache
        cache = KVLatentCache(config, max_batch=3, max_seq=32)
        prefill = model(tokens[:, :16], start_pos=0, cache=cache)
        assert _relative_error(prefill, full[:, :16]) < 1e-5
        for pos in range(16, 24):  # several decode steps, one token at a time
            step = model(tokens[:, pos : pos + 1], start_pos=pos, cache=cache)
            assert _relative_error(step[:, 0], full[:, pos]) < 1e-5


def test_cache_holds_only_the_latent_and_rope_key(tiny):
    cache = KVLatentCache(tiny, max_batch=2, max_seq=8)
    assert isinstance(cache, LatentCache)
    per_token_per_layer = cache.c_kv.shape[-1] + cache.k_pe.shape[-1]
    assert per_token_per_layer == tiny.kv_lora_rank + tiny.qk_rope_head_dim == tiny.latent_cache_dim


def test_per_sequence_start_positions_match_each_sequence_run_alone(tiny):
    model = Transformer(tiny).eval()
    lengths = [5, 9]
    seqs = [torch.randint(0, tiny.vocab_size, (1, n + 1)) for n in lengths]
    with torch.no_grad():
        expected = [model(s)[:, -1] for s in seqs]
        cache = KVLatentCache(tiny, max_batch=2, max_seq=16)
        for b, s in enumerate(seqs):  # prefill each row of the shared cache at its own length
            row = KVLatentCache(tiny, max_batch=1, max_seq=16)
            model(s[:, :-1], 0, row)
            cache.c_kv[:, b] = row.c_kv[:, 0]
            cache.k_pe[:, b] = row.k_pe[:, 0]
        last = torch.cat([s[:, -1:] for s in seqs])
        got = model(last, start_pos=torch.tensor(lengths), cache=cache)[:, 0]
    for b in range(2):
        assert _relative_error(got[b], expected[b][0]) < 1e-5


def test_future_tokens_never_change_earlier_logits(tiny):
    model = Transformer(tiny).eval()
    tokens = torch.randint(0, tiny.vocab_size, (2, 32))
    changed = tokens.clone()
    changed[:, 20:] = torch.randint(0, tiny.vocab_size, (2, 12))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-5)
    assert not torch.allclose(a[:, 20:], b[:, 20:], atol=1e-3)


def test_positions_past_max_seq_len_raise(tiny):
    model = Transformer(tiny)
    with pytest.raises(PositionError):
        model(torch.zeros(1, 4, dtype=torch.long), start_pos=tiny.max_seq_len - 2)
