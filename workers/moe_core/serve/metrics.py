"""Prometheus metrics of the inference worker: request counters and latencies, engine and cache state, and the
expert store's per-tier hits and misses (read from the engine when scraped)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class EngineCollector:
    """Reads engine state at scrape time (no locking: these are monotone counters and sizes)."""

    def __init__(self, engine, store=None):
        self.engine, self.store = engine, store

    def collect(self):
        sched, bm = self.engine.scheduler, self.engine.block_manager
        g = GaugeMetricFamily("moe_requests_running", "Sequences in the running batch")
        g.add_metric([], len(sched.running))
        yield g
        g = GaugeMetricFamily("moe_requests_waiting", "Sequences admitted but not yet running")
        g.add_metric([], len(sched.waiting))
        yield g
        g = GaugeMetricFamily("moe_kv_cache_usage_ratio", "Fraction of latent-cache blocks in use")
        g.add_metric([], 1.0 - bm.num_free_blocks / len(bm.blocks))
        yield g
        c = CounterMetricFamily(
            "moe_prefix_cache_queries", "Full prompt blocks looked up in the prefix cache"
        )
        c.add_metric([], bm.stats.queries)
        yield c
        c = CounterMetricFamily("moe_prefix_cache_hits", "Prompt blocks found in the prefix cache")
        c.add_metric([], bm.stats.hits)
        yield c
        c = CounterMetricFamily("moe_preemptions", "Sequences preempted for lack of cache blocks")
        c.add_metric([], sched.num_preemptions)
        yield c
        if self.store is not None:
            hits = CounterMetricFamily(
                "moe_expert_tier_hits", "Expert lookups served by a tier", labels=["tier"]
            )
            misses = CounterMetricFamily(
                "moe_expert_tier_misses", "Expert lookups a tier missed", labels=["tier"]
            )
            for tier, counter in self.store.counters.items():
                hits.add_metric([tier], counter.hits)
                misses.add_metric([tier], counter.misses)
            yield hits
            yield misses
            c = CounterMetricFamily("moe_expert_prefetches", "Experts prefetched for the next layer")
            c.add_metric([], self.store.prefetches)
            yield c
            g = GaugeMetricFamily("moe_expert_gpu_slots", "GPU slots per MoE layer (the expert budget)")
            g.add_metric([], self.store.gpu_slots)
            yield g


class ServerMetrics:
    def __init__(self, engine, store=None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "moe_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("moe_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("moe_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "moe_time_to_first_token_seconds", "Arrival to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "moe_request_latency_seconds", "Arrival to last token", buckets=LATENCY_BUCKETS, registry=r
        )
        r.register(EngineCollector(engine, store))
        from moe_core.system_metrics import SystemCollector

        r.register(SystemCollector())  # GPU temperature, power, memory, utilisation; network bytes
