"""Benchmark the model core's training step (forward + backward) against Hugging Face's DeepseekV3ForCausalLM
built at the identical configuration, plus grouped GEMM vs a per-expert loop for the routed experts.

GPU (the recorded run):  PYTHONPATH=workers:layers/common:. python bench/bench_model.py --preset mini
CPU smoke test:          python bench/bench_model.py --preset tiny --batch 2 --seq 64 --steps 2 --warmup 1

FLOPs per token (stated, used for MFU): 6 x (active parameters - the embedding row) + causal attention
(QK^T and PV: 2 * n_heads * (qk_head_dim + v_head_dim) * seq / 2 per token per layer forward, x3 for
fwd+bwd). MFU = achieved FLOP/s / 989 TFLOP/s (H200 dense bf16 datasheet).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from moe_core.config import ModelConfig
from moe_core.model import RoutedExperts, Transformer, causal_lm_flops_per_token
from moe_core.params import count_params

PEAK_BF16_FLOPS = 989e12  # H200 SXM dense bf16, datasheet


def hf_model(config: ModelConfig, device: str, dtype: torch.dtype):
    """transformers' DeepseekV3ForCausalLM with our config's dimensions (no MTP layer: HF trains none)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    c = config
    hf_config = DeepseekV3Config(
        vocab_size=c.vocab_size,
        hidden_size=c.dim,
        intermediate_size=c.dense_inter_dim,
        moe_intermediate_size=c.moe_inter_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_heads,
        n_shared_experts=c.n_shared_experts,
        n_routed_experts=c.n_routed_experts,
        routed_scaling_factor=c.route_scale,
        kv_lora_rank=c.kv_lora_rank,
        q_lora_rank=c.q_lora_rank or None,
        qk_rope_head_dim=c.qk_rope_head_dim,
        v_head_dim=c.v_head_dim,
        qk_nope_head_dim=c.qk_nope_head_dim,
        n_group=c.n_expert_groups,
        topk_group=c.n_limited_groups,
        num_experts_per_tok=c.n_activated_experts,
        first_k_dense_replace=c.n_dense_layers,
        norm_topk_prob=True,
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
    )
    with torch.device(device):
        model = DeepseekV3ForCausalLM._from_config(hf_config, attn_implementation="sdpa", dtype=dtype)
    return model.to(device=device, dtype=dtype)


def time_steps(step, warmup: int, steps: int, device: str) -> float:
    """Seconds per step (mean over `steps` after `warmup`)."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def bench_ours(config, args, device, dtype, grouped: bool, compile_blocks: bool, pad_v: bool = True) -> dict:
    from moe_core.model import MLA

    MLA.pad_v_for_flash = pad_v
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(config)
    model.to(dtype).train()
    model.set_expert_path(grouped)
    if compile_blocks:
        for block in model.layers:
            block.compile()
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    targets = tokens.roll(-1, dims=1)

    last = {}

    def step():
        model.zero_grad(set_to_none=True)
        out = model.loss(tokens, targets)
        out.loss.backward()
        model.update_router_bias()
        last["loss"] = out.loss.detach()

    reset_memory(device)
    seconds = time_steps(step, args.warmup, args.steps, device)
    result = {"seconds": seconds, "peak_gib": peak_gib(device), "loss": last["loss"].item()}
    return result


def bench_hf(config, args, device, dtype) -> dict:
    torch.manual_seed(0)
    model = hf_model(config, device, dtype).train()
    n_params = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    targets = tokens.roll(-1, dims=1)

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=tokens).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()

    reset_memory(device)
    seconds = time_steps(step, args.warmup, args.steps, device)
    impl = getattr(model.config, "_experts_implementation", None)
    result = {"seconds": seconds, "peak_gib": peak_gib(device), "n_params": n_params, "experts_impl": impl}
    return result


def bench_experts_only(config, args, device, dtype) -> dict:
    """RoutedExperts alone, fwd+bwd on the benchmark's token count: grouped GEMM vs per-expert loop."""
    torch.manual_seed(0)
    n_tokens = args.batch * args.seq
    with torch.device(device):
        experts = RoutedExperts(config.n_routed_experts, config.dim, config.moe_inter_dim)
    for w in (experts.w1, experts.w2, experts.w3):
        torch.nn.init.normal_(w, std=0.02)
    experts.to(dtype)
    x = torch.randn(n_tokens, config.dim, device=device, dtype=dtype, requires_grad=True)
    idx = (
        torch.rand(n_tokens, config.n_routed_experts, device=device).topk(config.n_activated_experts).indices
    )
    weights = torch.rand(n_tokens, config.n_activated_experts, device=device)
    flops = 6 * n_tokens * config.n_activated_experts * 3 * config.dim * config.moe_inter_dim
    out = {}
    for name, grouped in (("grouped_mm", True), ("per_expert_loop", False)):
        experts.use_grouped_mm = grouped

        def step():
            experts.zero_grad(set_to_none=True)
            x.grad = None
            experts(x, idx, weights).sum().backward()

        s = time_steps(step, args.warmup, args.steps, device)
        out[name] = {"seconds": s, "tflops": flops / s / 1e12}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--variants",
        default="experts,ours_grouped,hf,ours_loop,ours_compiled",
        help="comma list of: experts, ours_grouped, ours_nopad, ours_loop, hf, ours_compiled",
    )
    parser.add_argument(
        "--out", default=os.environ.get("OUT", "."), help="folder for results.md / results.json"
    )
    args = parser.parse_args()
    device, dtype = args.device, getattr(torch, args.dtype)
    config = ModelConfig.from_preset(args.preset, mtp_depth=0, max_seq_len=max(args.seq, 128))
    counts = count_params(config)
    flops_per_token = causal_lm_flops_per_token(config, args.seq, counts["active"] - config.dim)
    tokens_per_step = args.batch * args.seq
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "python": sys.version.split()[0],
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    print(
        json.dumps({"config": args.preset, "counts": counts, "flops_per_token": flops_per_token, **env}),
        flush=True,
    )

    results: dict[str, dict] = {}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def record(name: str, fn):
        start = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as exc:  # one failing variant must not lose the others' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        results[name]["wall_s"] = round(time.perf_counter() - start, 1)
        reset_memory(device)
        print(name, json.dumps(results[name]), flush=True)
        write(out_dir, args, config, counts, flops_per_token, tokens_per_step, env, results)

    runners = {
        "experts": lambda: bench_experts_only(config, args, device, dtype),
        "ours_grouped": lambda: bench_ours(config, args, device, dtype, grouped=True, compile_blocks=False),
        "ours_loop": lambda: bench_ours(config, args, device, dtype, grouped=False, compile_blocks=False),
        "ours_nopad": lambda: bench_ours(config, args, device, dtype, True, False, pad_v=False),
        "hf": lambda: bench_hf(config, args, device, dtype),
        "ours_compiled": lambda: bench_ours(config, args, device, dtype, grouped=True, compile_blocks=True),
    }
    for name in args.variants.split(","):
        record(name, runners[name])
    print((out_dir / "results.md").read_text())
    return 0


def write(out_dir, args, config, counts, flops_per_token, tokens_per_step, env, results) -> None:
    rows = []
    labels = {
        "ours_compiled": "ours, grouped GEMM, torch.compile per block",
        "ours_grouped": "ours, grouped GEMM, eager",
        "ours_loop": "ours, per-expert loop, eager",
        "ours_nopad": "ours, grouped GEMM, eager, v not padded (SDPA picks its kernel)",
        "hf": "transformers DeepseekV3ForCausalLM, eager",
    }
    hf_s = results.get("hf", {}).get("seconds")
    for name in ("ours_compiled", "ours_grouped", "ours_nopad", "ours_loop", "hf"):
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append(f"| {labels[name]} | failed: {r['error'][:120]} | | | | |")
            continue
        tps = tokens_per_step / r["seconds"]
        mfu = tps * flops_per_token / PEAK_BF16_FLOPS
        speedup = (
            f"{hf_s / r['seconds']:.2f}x" if hf_s and name != "hf" else ("1.00x" if name == "hf" else "")
        )
        label = labels[name] + (f" (experts: {r['experts_impl']})" if name == "hf" else "")
        rows.append(
            f"| {label} | {r['seconds'] * 1e3:.1f} | {tps:,.0f} | {100 * mfu:.1f}% | {r['peak_gib']:.1f} | {speedup} |"
        )
    lines = [
        f"preset `{args.preset}` (mtp off), batch {args.batch} x {args.seq} tokens, {args.dtype}, "
        f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}",
        f"total params {counts['total']:,}, active {counts['active']:,}; FLOPs/token "
        f"{flops_per_token / 1e9:.3f} G (6 x {counts['active'] - config.dim:,} active non-embedding + causal "
        "attention); MFU against 989 TFLOP/s",
        "",
        "| training step (fwd+bwd) | ms/step | tokens/s | MFU | peak GiB | vs transformers |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    if "experts" in results and "error" not in results["experts"]:
        e = results["experts"]
        lines += [
            "",
            "| routed experts alone, fwd+bwd | ms | TFLOP/s |",
            "| --- | ---: | ---: |",
            *(
                f"| {k} | {v['seconds'] * 1e3:.2f} | {v['tflops']:.1f} |"
                for k, v in e.items()
                if k != "wall_s"
            ),
        ]
    if "hf" in results and "n_params" in results["hf"]:
        lines += [
            "",
            f"transformers model parameters: {results['hf']['n_params']:,} (ours: {counts['total']:,})",
        ]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(
        json.dumps({"args": vars(args), "env": env, "results": results}, indent=2)
    )


if __name__ == "__main__":
    raise SystemExit(main())
