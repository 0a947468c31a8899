"""Next-token choice from logits: greedy, or temperature and nucleus (top-p) sampling, optionally seeded."""

from __future__ import annotations

import torch

from moe_core.serve.sequence import Sequence


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose probability reaches top_p (renormalised)."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    drop = before >= top_p
    # The most likely token always stays: a top_p below float32's smallest number compares as 0.
    drop[..., 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits [B, vocab] of the last position of each sequence -> one token id per sequence."""
    logits = logits.float()
    greedy = logits.argmax(-1)
    if all(seq.params.greedy for seq in seqs):
        return greedy.tolist()
    out = greedy.tolist()
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.greedy:
            continue
        probs = top_p_filter(torch.softmax(logits[i] / p.temperature, dim=-1), p.top_p)
        out[i] = int(torch.multinomial(probs, 1, generator=seq.generator).item())
    return out
