"""`moectl serve`: start the inference worker's HTTP server over a model artifact (a directory or an S3 URI).

No torch import at module level: `moectl --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    model: Annotated[str, typer.Option(help="Model artifact: a directory or s3://bucket/prefix")],
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    max_batch: Annotated[int, typer.Option(help="Sequences in the running batch")] = 16,
    max_queue: Annotated[int, typer.Option(help="Requests waiting beyond the batch before 429")] = 64,
    expert_budget: Annotated[
        float, typer.Option(help="Fraction of each layer's routed experts in GPU memory")
    ] = 1.0,
    expert_policy: Annotated[
        str, typer.Option(help="Expert eviction policy: lru, lfu or decayed")
    ] = "decayed",
    host_expert_budget: Annotated[
        float | None, typer.Option(help="Fraction of experts kept in host memory (default: all)")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis tier for expert weights (ElastiCache)")] = None,
    s3_experts: Annotated[
        str | None, typer.Option(help="S3 tier for expert weights: s3://bucket/prefix")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16")] = "float32",
    max_prompt_tokens: Annotated[int | None, typer.Option(help="Longest prompt accepted")] = None,
    max_output_tokens: Annotated[int, typer.Option(help="Largest max_tokens accepted")] = 1024,
    model_name: Annotated[
        str | None, typer.Option(help="Name in /v1/models (default: the directory's)")
    ] = None,
) -> None:
    """Serve a model over OpenAI-compatible HTTP (completions, chat, SSE streaming, /health, /metrics)."""
    import uvicorn

    from moe_core.serve.server import ServeOptions, build_app

    opts = ServeOptions(
        model=model,
        max_batch=max_batch,
        max_queue=max_queue,
        expert_budget=expert_budget,
        expert_policy=expert_policy,
        host_expert_budget=host_expert_budget,
        redis_url=redis_url,
        s3_experts=s3_experts,
        device=device,
        dtype=dtype,
        max_prompt_tokens=max_prompt_tokens,
        max_output_tokens=max_output_tokens,
        model_name=model_name,
    )
    try:
        app = build_app(opts)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(app, host=host, port=port, log_level="warning")
