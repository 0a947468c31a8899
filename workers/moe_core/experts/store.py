"""The tiered expert store and the routed-experts module that runs on it.

Each MoE layer has a fixed number of GPU slots (the budget) holding some of its experts' weights; the rest live
below, in the first tier that has them: host memory, Redis, S3. A layer's forward asks the store for the experts
its tokens chose; misses are fetched up the tiers into slots freed by the eviction policy. After each layer the
store prefetches, for the next MoE layer, the experts that most often followed this layer's choices.
`TieredRoutedExperts` has `RoutedExperts`' signature and arithmetic (it is one, over slots instead of experts),
so the model's outputs do not depend on the budget.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from moe_core.experts.placement import PlacementPlan
from moe_core.experts.policies import DecayedFrequency, EvictionPolicy, make_policy
from moe_core.experts.tiers import ExpertKey, ExpertNotFound, ExpertWeights, Tier
from moe_core.model import MoE, RoutedExperts

WEIGHT_NAMES = ("w1", "w2", "w3")


@dataclass
class TierCounter:
    hits: int = 0
    misses: int = 0


class ExpertStore:
    def __init__(
        self,
        moe_layers: list[int],
        n_experts: int,
        shapes: dict[str, tuple[int, ...]],
        *,
        gpu_slots: int,
        tiers: list[Tier],
        dtype: torch.dtype,
        device: torch.device | str,
        policy: str = "decayed",
        policy_kwargs: dict | None = None,
        prefetch_width: int = 0,
    ):
        if not 1 <= gpu_slots <= n_experts:
            raise ValueError(f"gpu_slots must be in [1, {n_experts}], got {gpu_slots}")
        if not tiers:
            raise ValueError("the store needs at least one tier below the GPU that holds every expert")
        self.moe_layers = list(moe_layers)
        self.next_layer = dict(zip(self.moe_layers, self.moe_layers[1:], strict=False))
        self.n_experts, self.gpu_slots = n_experts, gpu_slots
        self.tiers = tiers
        self.device = torch.device(device)
        self.slots = {
            layer: {n: torch.zeros(gpu_slots, *shapes[n], dtype=dtype, device=device) for n in WEIGHT_NAMES}
            for layer in self.moe_layers
        }
        self.slot_of = {
            layer: torch.full((n_experts,), -1, dtype=torch.long, device=device) for layer in moe_layers
        }
        self.resident: dict[int, dict[int, int]] = {layer: {} for layer in moe_layers}  # expert -> slot
        self.policy_name = policy
        self.policies: dict[int, EvictionPolicy] = {
            layer: make_policy(policy, **(policy_kwargs or {})) for layer in moe_layers
        }
        self.clock = dict.fromkeys(moe_layers, 0)
        self.counters: dict[str, TierCounter] = {
            "gpu": TierCounter(),
            **{t.name: TierCounter() for t in tiers},
        }
        self.prefetch_width = prefetch_width
        self.prefetches = 0
        self.prefetch_hits = 0
        self._prefetched: dict[int, set[int]] = defaultdict(set)
        self._follows = {layer: np.zeros((n_experts, n_experts)) for layer in moe_layers}

    # ---- tiers ------------------------------------------------------------------------------------------
    def _fetch(self, key: ExpertKey) -> ExpertWeights:
        """From the highest tier below the GPU that holds the expert; promoted into the tiers above it."""
        for i, tier in enumerate(self.tiers):
            w = tier.get(key)
            if w is not None:
                self.counters[tier.name].hits += 1
                for above in self.tiers[:i]:
                    above.put(key, w)
                return w
            self.counters[tier.name].misses += 1
        raise ExpertNotFound(
            f"expert {key[1]} of layer {key[0]} is in no tier ({[t.name for t in self.tiers]})"
        )

    def _slot_for(self, layer: int, protected: set[int]) -> int:
        resident = self.resident[layer]
        if len(resident) < self.gpu_slots:
            return next(s for s in range(self.gpu_slots) if s not in set(resident.values()))
        victim = self.policies[layer].victim([e for e in resident if e not in protected], self.clock[layer])
        self.policies[layer].forget(victim)
        self._prefetched[layer].discard(victim)
        slot = resident.pop(victim)
        self.slot_of[layer][victim] = -1
        return slot

    def _load(self, layer: int, expert: int, protected: set[int]) -> None:
        weights = self._fetch((layer, expert))
        slot = self._slot_for(layer, protected)
        # On the compute stream: the copy must wait for queued kernels that still read the slot's old expert.
        for n in WEIGHT_NAMES:
            self.slots[layer][n][slot].copy_(weights[n], non_blocking=True)
        self.slot_of[layer][expert] = slot
        self.resident[layer][expert] = slot

    def warm(self, plan: PlacementPlan) -> None:
        """Load the plan's hot experts into GPU slots and its warm ones into the host tier (if there is one)."""
        host = next((t for t in self.tiers if t.name == "host"), None)
        for layer in self.moe_layers:
            for e in plan.gpu.get(layer, [])[: self.gpu_slots]:
                self._load(layer, e, set())
            if host is not None:
                for e in plan.host.get(layer, []):
                    host.put((layer, e), self._fetch((layer, e)))
            policy = self.policies[layer]
            if isinstance(policy, DecayedFrequency) and layer in plan.counts:
                total = sum(plan.counts[layer]) or 1.0
                # a prior worth a few tokens of routing: the plan's ranking until real traffic says otherwise
                for e, c in enumerate(plan.counts[layer]):
                    policy.score[e] = 4.0 * c / total
                    policy.stamp[e] = 0

    # ---- the forward path -------------------------------------------------------------------------------
    def ensure(self, layer: int, experts: list[int]) -> Tensor:
        """Make `experts` (at most gpu_slots of them) resident; returns expert -> slot [n_experts] (device)."""
        if len(experts) > self.gpu_slots:
            raise ValueError(f"{len(experts)} experts asked at once for {self.gpu_slots} slots")
        self.clock[layer] += 1
        now = self.clock[layer]
        policy = self.policies[layer]
        protected = set(experts)
        for e in experts:
            policy.access(e, now)
            if e in self.resident[layer]:
                self.counters["gpu"].hits += 1
                if e in self._prefetched[layer]:
                    self.prefetch_hits += 1
                    self._prefetched[layer].discard(e)
            else:
                self.counters["gpu"].misses += 1
                self._load(layer, e, protected)
        return self.slot_of[layer]

    def observe(self, layer: int, needed: list[int]) -> None:
        """A layer's step used `needed`: learn which experts follow which, and prefetch for the next layer."""
        nxt = self.next_layer.get(layer)
        if nxt is not None:
            self._learn_and_prefetch(layer, nxt, needed)

    def _learn_and_prefetch(self, layer: int, nxt: int, needed: list[int]) -> None:
        prev = getattr(self, "_last_needed", None)
        if prev is not None and prev[0] in self._follows and self.next_layer.get(prev[0]) == layer:
            self._follows[prev[0]][np.ix_(prev[1], needed)] += 1.0
        self._last_needed = (layer, needed)
        if self.prefetch_width <= 0:
            return
        scores = self._follows[layer][needed].sum(axis=0)
        if not scores.any():
            return
        resident = self.resident[nxt]
        for e in np.argsort(-scores, kind="stable")[: self.prefetch_width].tolist():
            if scores[e] <= 0 or e in resident:
                continue
            self._load(nxt, e, set())
            self._prefetched[nxt].add(e)
            self.prefetches += 1

    def hit_rate(self, tier: str = "gpu") -> float:
        c = self.counters[tier]
        return c.hits / max(1, c.hits + c.misses)

    def reset_counters(self) -> None:
        for c in self.counters.values():
            c.hits = c.misses = 0
        self.prefetches = self.prefetch_hits = 0


class TieredRoutedExperts(RoutedExperts):
    """RoutedExperts over one layer's GPU slots: token -> expert is mapped to token -> slot, then the same math."""

    def __init__(self, store: ExpertStore, layer_id: int):
        torch.nn.Module.__init__(self)
        self.store, self.layer_id = store, layer_id
        self.n_experts = store.gpu_slots
        self.use_grouped_mm = None
        slots = store.slots[layer_id]
        # plain tensors, not parameters: the slots' contents change as experts come and go
        self.w1, self.w2, self.w3 = slots["w1"], slots["w2"], slots["w3"]

    def forward(self, x: Tensor, topk_idx: Tensor, topk_weight: Tensor) -> Tensor:
        n_tokens, k = topk_idx.shape
        flat = topk_idx.flatten()
        needed = sorted(set(flat.tolist()))
        y = x.new_empty(n_tokens * k, x.shape[1])
        slots = self.store.gpu_slots
        # A prefill can route to more experts than the layer has slots: run them a slot-load at a time.
        for i in range(0, len(needed), slots):
            chunk = needed[i : i + slots]
            slot_of = self.store.ensure(self.layer_id, chunk)
            if len(chunk) == len(needed):
                pairs = torch.arange(flat.numel(), device=flat.device)
            else:
                pairs = torch.isin(flat, torch.tensor(chunk, device=flat.device)).nonzero().squeeze(1)
            slot = slot_of[flat[pairs]]
            # pairs stay in (token, k) order within a slot, exactly as RoutedExperts orders them per expert
            order = slot.argsort(stable=True)
            counts = torch.zeros(slots, dtype=torch.int64, device=x.device).scatter_add_(
                0, slot, torch.ones_like(slot)
            )
            x_sorted = x[pairs[order] // k]
            if self._grouped(x):
                y_sorted = self._forward_grouped(x_sorted, counts)
            else:
                y_sorted = self._forward_loop(x_sorted, counts)
            y[pairs[order]] = y_sorted
        self.store.observe(self.layer_id, needed)
        return torch.bmm(topk_weight.unsqueeze(1).to(y.dtype), y.view(n_tokens, k, -1)).squeeze(1)


def expert_weights(model: torch.nn.Module) -> dict[int, dict[str, Tensor]]:
    """layer_id -> {"w1": [E, ...], "w2": ..., "w3": ...} of every trunk MoE layer."""
    out = {}
    for layer in model.layers:
        if isinstance(layer.ffn, MoE) and isinstance(layer.ffn.experts, RoutedExperts):
            out[layer.layer_id] = {n: getattr(layer.ffn.experts, n).detach() for n in WEIGHT_NAMES}
    return out


def seed_tier(tier: Tier, weights: dict[int, dict[str, Tensor]]) -> None:
    """Put every expert of every layer into `tier` (the cold copy the store falls back on)."""
    items = [
        ((layer, e), {n: w[n][e] for n in WEIGHT_NAMES})
        for layer, w in weights.items()
        for e in range(len(w["w1"]))
    ]
    if hasattr(tier, "put_many"):
        tier.put_many(items)
    else:
        for key, w in items:
            tier.put(key, w)


def offload_experts(
    model: torch.nn.Module,
    *,
    budget: float,
    tiers: list[Tier],
    policy: str = "decayed",
    plan: PlacementPlan | None = None,
    prefetch_width: int = 0,
    seed: bool = True,
    policy_kwargs: dict | None = None,
) -> ExpertStore:
    """Move the model's routed experts into a store with `budget` (a fraction of each layer's experts) in GPU
    slots; `seed` copies every expert into the last tier first. The model runs unchanged afterwards."""
    from moe_core.experts.placement import plan_placement

    cfg = model.config
    weights = expert_weights(model)
    if not weights:
        raise ValueError("the model has no routed experts to offload")
    gpu_slots = max(cfg.n_activated_experts, min(cfg.n_routed_experts, round(budget * cfg.n_routed_experts)))
    first = next(iter(weights.values()))
    shapes = {n: tuple(first[n].shape[1:]) for n in WEIGHT_NAMES}
    if seed:
        seed_tier(tiers[-1], weights)
    store = ExpertStore(
        list(weights),
        cfg.n_routed_experts,
        shapes,
        gpu_slots=gpu_slots,
        tiers=tiers,
        dtype=first["w1"].dtype,
        device=first["w1"].device,
        policy=policy,
        policy_kwargs=policy_kwargs,
        prefetch_width=prefetch_width,
    )
    for layer in model.layers:
        if layer.layer_id in weights:
            layer.ffn.experts = TieredRoutedExperts(store, layer.layer_id)
    del weights, first
    store.warm(plan or plan_placement({}, gpu_slots, 0, store.moe_layers, cfg.n_routed_experts))
    store.reset_counters()
    return store
