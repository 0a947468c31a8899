"""Replay a recorded routing trace through an expert cache of a given size: hit rates per eviction policy.

A trace is an integer array [tokens, moe_layers, top_k] of the experts each token chose in each MoE layer, in
decode order. Each layer has its own cache of `capacity` experts (the store's GPU slots); a token's experts
in a layer are all needed at once, so none of them is evicted to make room for another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moe_core.experts.policies import Belady, EvictionPolicy


@dataclass
class SimResult:
    policy: str
    capacity: int
    accesses: int
    hits: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 1.0


def simulate_layer(
    choices: np.ndarray, capacity: int, policy: EvictionPolicy, initial: list[int] | None = None
) -> tuple[int, int]:
    """choices [tokens, top_k] of one layer -> (accesses, hits)."""
    if capacity < choices.shape[1]:
        raise ValueError(f"capacity {capacity} is below top_k {choices.shape[1]}: a token could not run")
    resident: set[int] = set((initial or [])[:capacity])
    hits = accesses = 0
    for now, row in enumerate(choices.tolist()):
        needed = set(row)
        for e in needed:
            policy.access(e, now)
            accesses += 1
            if e in resident:
                hits += 1
                continue
            if len(resident) >= capacity:
                v = policy.victim(resident - needed, now)
                resident.discard(v)
                policy.forget(v)
            resident.add(e)
    return accesses, hits


def simulate(
    trace: np.ndarray,
    capacity: int,
    policy_factory: Callable[[int], EvictionPolicy],
    initial: dict[int, list[int]] | None = None,
) -> SimResult:
    """policy_factory(layer_index) -> a fresh policy; initial[layer_index] = experts resident at the start."""
    if trace.ndim != 3:
        raise ValueError(f"trace must be [tokens, layers, top_k], got shape {trace.shape}")
    accesses = hits = 0
    name = ""
    for layer in range(trace.shape[1]):
        policy = policy_factory(layer)
        name = policy.name
        a, h = simulate_layer(trace[:, layer], capacity, policy, (initial or {}).get(layer))
        accesses += a
        hits += h
    return SimResult(name, capacity, accesses, hits)


def belady_factory(trace: np.ndarray) -> Callable[[int], EvictionPolicy]:
    def make(layer: int) -> EvictionPolicy:
        uses: dict[int, list[int]] = {}
        for t, row in enumerate(trace[:, layer].tolist()):
            for e in set(row):
                uses.setdefault(e, []).append(t)
        return Belady(uses)

    return make
