"""Assemble the worker: load the artifact, optionally move routed experts into the tiered store, build the
engine and the HTTP app. `moectl serve` calls `build_app`; tests call it too, with the same options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServeOptions:
    model: str
    max_batch: int = 16
    max_queue: int = 64
    expert_budget: float = 1.0
    expert_policy: str = "decayed"
    host_expert_budget: float | None = None
    redis_url: str | None = None
    s3_experts: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    max_prompt_tokens: int | None = None
    max_output_tokens: int = 1024
    model_name: str | None = None
    block_size: int = 16
    prefetch_width: int = 0
    use_cuda_graphs: bool = True


def build_tiers(opts: ServeOptions, n_experts: int):
    from moe_core.experts.policies import make_policy
    from moe_core.experts.tiers import HostTier, RedisTier, S3Tier

    cold = []
    if opts.redis_url:
        cold.append(RedisTier(opts.redis_url, prefix=f"moe-experts:{Path(opts.model).name}"))
    if opts.s3_experts:
        if not opts.s3_experts.startswith("s3://"):
            raise ValueError(f"--s3-experts must be s3://bucket/prefix, got {opts.s3_experts!r}")
        bucket, _, prefix = opts.s3_experts[len("s3://") :].partition("/")
        cold.append(S3Tier(bucket, prefix))
    if opts.host_expert_budget is None:
        host_capacity = None if not cold else 0
    else:
        host_capacity = round(opts.host_expert_budget * n_experts)
    host = HostTier(host_capacity, make_policy(opts.expert_policy), pin=opts.device.startswith("cuda"))
    # without a lower tier, host memory is where every expert lives
    return [host, *cold] if cold else [HostTier(None, pin=opts.device.startswith("cuda"))]


def build_app(opts: ServeOptions):
    import torch

    from moe_core.artifact import load_model
    from moe_core.serve.api import Server, ServerLimits, create_app
    from moe_core.serve.async_engine import AsyncEngine
    from moe_core.serve.detokenizer import Tokenizer
    from moe_core.serve.engine import EngineConfig, LLMEngine
    from moe_core.serve.loader import resolve_model_dir
    from moe_core.serve.metrics import ServerMetrics

    if not 0 < opts.expert_budget <= 1:
        raise ValueError(f"--expert-budget must be in (0, 1], got {opts.expert_budget}")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if opts.dtype not in dtypes:
        raise ValueError(f"--dtype must be one of {sorted(dtypes)}, got {opts.dtype!r}")
    directory = resolve_model_dir(opts.model)
    model = load_model(directory, device=opts.device, dtype=dtypes[opts.dtype]).eval()
    cfg = model.config
    tokenizer = Tokenizer(directory / "tokenizer.json")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the model only {cfg.vocab_size}")
    store = None
    if opts.expert_budget < 1 or opts.redis_url or opts.s3_experts:
        store = _offload(model, opts, directory)
    engine = LLMEngine(
        model,
        EngineConfig(
            max_num_seqs=opts.max_batch,
            block_size=opts.block_size,
            use_cuda_graphs=opts.use_cuda_graphs and store is None,
        ),
        eos_token_ids=(tokenizer.eos_token_id,),
    )
    limits = ServerLimits(
        max_prompt_tokens=min(opts.max_prompt_tokens or engine.max_model_len - 1, engine.max_model_len - 1),
        max_output_tokens=opts.max_output_tokens,
        max_model_len=engine.max_model_len,
    )
    async_engine = AsyncEngine(engine, max_queue=opts.max_queue)
    async_engine.start()
    server = Server(
        async_engine, tokenizer, opts.model_name or directory.name, limits, ServerMetrics(engine, store)
    )
    return create_app(server)


def _offload(model, opts: ServeOptions, directory: Path):
    from moe_core.experts.placement import load_routing_stats, plan_placement
    from moe_core.experts.store import offload_experts

    cfg = model.config
    tiers = build_tiers(opts, cfg.n_routed_experts)
    gpu_slots = max(cfg.n_activated_experts, round(opts.expert_budget * cfg.n_routed_experts))
    stats_path = directory / "routing_stats.json"
    counts = (
        load_routing_stats(stats_path, cfg.n_dense_layers, cfg.n_routed_experts)
        if stats_path.is_file()
        else {}
    )
    host_slots = (
        None if opts.host_expert_budget is None else round(opts.host_expert_budget * cfg.n_routed_experts)
    )
    moe_layers = list(range(cfg.n_dense_layers, cfg.n_layers))
    plan = plan_placement(counts, gpu_slots, host_slots, moe_layers, cfg.n_routed_experts)
    return offload_experts(
        model,
        budget=opts.expert_budget,
        tiers=tiers,
        policy=opts.expert_policy,
        plan=plan,
        prefetch_width=opts.prefetch_width,
    )
