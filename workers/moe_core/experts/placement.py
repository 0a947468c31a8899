"""The placement plan: from the routing statistics a trained model ships (`routing_stats.json`), which experts
start in the GPU tier and which in host memory, per MoE layer - the most used first.

`routing_stats.json` holds per-layer per-expert token counts; accepted forms:
  the training worker's {"layers": [{"layer": <layer_id>, "tokens_per_expert": [...]}, ...]} (entries whose
  "layer" is not an integer, the MTP block's "mtp0", are skipped: serving does not run it);
  {"layers": {"<layer_id>": [count per expert], ...}}  or  {"<layer_id>": [count per expert], ...};
  {"expert_counts": [[count per expert] per MoE layer]} (MoE layers in order, the first at n_dense_layers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class RoutingStatsError(ValueError):
    """routing_stats.json is unreadable, or its counts do not fit the model."""


def parse_routing_stats(data: dict, first_moe_layer: int, n_experts: int) -> dict[int, list[float]]:
    if "expert_counts" in data:
        rows = data["expert_counts"]
        counts = {first_moe_layer + i: row for i, row in enumerate(rows)}
    elif isinstance(data.get("layers"), list):
        try:
            counts = {
                e["layer"]: e["tokens_per_expert"] for e in data["layers"] if isinstance(e.get("layer"), int)
            }
        except (AttributeError, KeyError, TypeError) as exc:
            raise RoutingStatsError(
                f"routing stats layer entries need 'layer' and 'tokens_per_expert': {exc}"
            ) from exc
    else:
        table = data.get("layers", data)
        try:
            counts = {int(k): v for k, v in table.items()}
        except (AttributeError, ValueError) as exc:
            raise RoutingStatsError(f"routing stats must map layer ids to counts: {exc}") from exc
    for layer, row in counts.items():
        if not isinstance(row, list) or len(row) != n_experts:
            raise RoutingStatsError(f"layer {layer}: expected {n_experts} counts, got {row!r:.80}")
    return {layer: [float(c) for c in row] for layer, row in counts.items()}


def load_routing_stats(path: str | Path, first_moe_layer: int, n_experts: int) -> dict[int, list[float]]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RoutingStatsError(f"cannot read routing stats {path}: {exc}") from exc
    return parse_routing_stats(data, first_moe_layer, n_experts)


@dataclass
class PlacementPlan:
    gpu: dict[int, list[int]]  # layer -> experts loaded into GPU slots at start, most used first
    host: dict[int, list[int]]  # layer -> experts kept in host memory at start
    counts: dict[int, list[float]]

    def to_dict(self) -> dict:
        return {"gpu": self.gpu, "host": self.host}


def plan_placement(
    counts: dict[int, list[float]],
    gpu_slots: int,
    host_slots: int | None,
    moe_layers: list[int],
    n_experts: int,
) -> PlacementPlan:
    """Rank each layer's experts by tokens routed; the top gpu_slots go to the GPU, the next host_slots to host."""
    gpu, host = {}, {}
    for layer in moe_layers:
        row = counts.get(layer, [0.0] * n_experts)
        ranked = sorted(range(n_experts), key=lambda e: (-row[e], e))
        gpu[layer] = ranked[:gpu_slots]
        rest = ranked[gpu_slots:]
        host[layer] = rest if host_slots is None else rest[:host_slots]
    return PlacementPlan(gpu, host, counts)
