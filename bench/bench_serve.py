"""Benchmark of the inference worker: decode throughput against the HBM roofline, time to first token,
Hugging Face transformers' `DeepseekV3ForCausalLM.generate` on the same weights, and the tiered expert store
(decode tokens/s and GPU hit rate at 100/50/25% of experts resident, LRU vs LFU vs decayed frequency).

On the GPU (one H200, `lite` preset, bf16, random init made on the GPU):
    PYTHONPATH=workers:layers/common:. python3 bench/bench_serve.py --preset lite --out $OUT
Decode only, the reference paths (before) against the serving fast paths, plus GPU kernels per step:
    ... bench/bench_serve.py --preset lite --sections decode --variants graphs-ref,graphs --kernels --out $OUT
Hit rates of the policies on the recorded routing trace (CPU, no model):
    .venv/bin/python bench/bench_serve.py --simulate-only
Debug on CPU: .venv/bin/python bench/bench_serve.py --preset tiny --device cpu --dtype float32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from moe_core.config import ModelConfig
from moe_core.experts.placement import plan_placement
from moe_core.experts.policies import LFU, LRU, DecayedFrequency
from moe_core.experts.simulate import belady_factory, simulate
from moe_core.experts.store import WEIGHT_NAMES, ExpertStore, TieredRoutedExperts, expert_weights, seed_tier
from moe_core.experts.tiers import HostTier
from moe_core.model import MoE, Transformer
from moe_core.serve.engine import EngineConfig, LLMEngine
from moe_core.serve.sequence import SamplingParams

TRACE = Path(__file__).parent / "traces" / "routing_trace.npz"
HALF_LIFES = (16.0, 32.0, 64.0, 128.0, 256.0, 512.0)  # candidates for decayed frequency's half-life
HALF_LIFE = 64.0  # replaced by the one chosen on the trace's first half, when there is a trace
ROOFLINE_GBS = 4800.0
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the model ------------------------------------------------------------------------------------------
def build_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> Transformer:
    """Random init directly on the device in the target dtype (no file: ~31 GB for lite)."""
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Transformer(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def param_bytes(model: Transformer) -> dict[str, int]:
    experts = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".experts." in n)
    embed = model.embed.weight.numel() * model.embed.weight.element_size()
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"total": total, "experts": experts, "embed": embed, "dense": total - experts - embed}


def expert_bytes(model: Transformer) -> int:
    moe = next(layer.ffn for layer in model.layers if isinstance(layer.ffn, MoE))
    return sum(
        getattr(moe.experts, n)[0].numel() * getattr(moe.experts, n).element_size() for n in WEIGHT_NAMES
    )


def unique_experts_per_step(model: Transformer, engine: LLMEngine, batch: int, prompt_len: int) -> float:
    """Mean over MoE layers of distinct experts one decode step of `batch` sequences touches (eager run)."""
    seen: list[int] = []
    hooks = [
        r.register_forward_hook(lambda m, i, o: seen.append(int(o[1].unique().numel())))
        for r in model.routers()
    ]
    try:
        g = torch.Generator().manual_seed(1234 + batch)
        params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
        vocab = model.config.vocab_size
        # distinct random prompts: identical ones would route identically and touch only top-k experts
        seqs = [
            engine.add_request(torch.randint(0, vocab, (prompt_len,), generator=g).tolist(), params)
            for _ in range(batch)
        ]
        engine.step()  # prefill
        seen.clear()
        use = engine.runner.use_cuda_graphs
        engine.runner.use_cuda_graphs = False
        engine.step()  # one eager decode step
        engine.runner.use_cuda_graphs = use
        for s in seqs:
            engine.abort(s)
    finally:
        for h in hooks:
            h.remove()
    return float(np.mean(seen))


# ---- decode throughput ----------------------------------------------------------------------------------
def decode_run(engine: LLMEngine, batch: int, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    """Admit `batch` prompts, prefill them, then time `new_tokens - 1` decode steps of the whole batch."""
    g = torch.Generator().manual_seed(batch)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    prompts = [torch.randint(0, vocab, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    seqs = [engine.add_request(p, params) for p in prompts]
    dev = engine.device
    sync(dev)
    t0 = time.perf_counter()
    while any(s.num_output_tokens == 0 for s in seqs):
        engine.step()
    sync(dev)
    t1 = time.perf_counter()
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
    sync(dev)
    t2 = time.perf_counter()
    return {
        "prefill_s": t1 - t0,
        "decode_s": t2 - t1,
        "steps": steps,
        "tokens": steps * batch,
        "outputs": [s.output_token_ids for s in seqs],
    }


def step_bytes(
    pb: dict, exp_bytes: int, moe_layers: int, uniq: float, batch: int, ctx: float, cfg, dtype_size
):
    """Bytes one decode step must read: dense weights, the distinct experts touched, the latent KV, embeddings."""
    kv = batch * ctx * cfg.latent_cache_dim * cfg.n_layers * dtype_size
    embed_rows = batch * cfg.dim * dtype_size
    return pb["dense"] + moe_layers * uniq * exp_bytes + kv + embed_rows


def ttft(engine: LLMEngine, prompt_len: int, vocab: int, repeats: int = 3) -> float:
    g = torch.Generator().manual_seed(99)
    times = []
    for _ in range(repeats):
        prompt = torch.randint(0, vocab, (prompt_len,), generator=g).tolist()
        sync(engine.device)
        t0 = time.perf_counter()
        seq = engine.add_request(prompt, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
        while seq.num_output_tokens == 0:
            engine.step()
        sync(engine.device)
        times.append(time.perf_counter() - t0)
        while engine.has_work():
            engine.step()
    return float(np.median(times))


# ---- Hugging Face transformers on the same weights ------------------------------------------------------
def hf_from_ours(model: Transformer):
    """DeepseekV3ForCausalLM holding our weights (shared storage, except experts' gate_up = cat(w1, w3))."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    c = model.config
    hcfg = DeepseekV3Config(
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
        rope_interleave=True,
        tie_word_embeddings=False,
        attention_bias=False,
        rope_parameters={"rope_theta": c.rope_theta, "rope_type": "default"},
        num_nextn_predict_layers=0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    s: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.head.weight,
    }
    for layer in model.layers:
        p = f"model.layers.{layer.layer_id}."
        a = layer.attn
        s[p + "input_layernorm.weight"] = layer.attn_norm.weight
        s[p + "post_attention_layernorm.weight"] = layer.ffn_norm.weight
        if a.q_lora_rank:
            s[p + "self_attn.q_a_proj.weight"] = a.wq_a.weight
            s[p + "self_attn.q_a_layernorm.weight"] = a.q_norm.weight
            s[p + "self_attn.q_b_proj.weight"] = a.wq_b.weight
        else:
            s[p + "self_attn.q_proj.weight"] = a.wq.weight
        s[p + "self_attn.kv_a_proj_with_mqa.weight"] = a.wkv_a.weight
        s[p + "self_attn.kv_a_layernorm.weight"] = a.kv_norm.weight
        s[p + "self_attn.kv_b_proj.weight"] = a.wkv_b.weight
        s[p + "self_attn.o_proj.weight"] = a.wo.weight
        f = layer.ffn
        if isinstance(f, MoE):
            s[p + "mlp.gate.weight"] = f.gate.weight
            s[p + "mlp.gate.e_score_correction_bias"] = f.gate.bias
            s[p + "mlp.experts.gate_up_proj"] = torch.cat([f.experts.w1, f.experts.w3], dim=1)
            s[p + "mlp.experts.down_proj"] = f.experts.w2
            mlp, q = f.shared, p + "mlp.shared_experts."
        else:
            mlp, q = f, p + "mlp."
        s[q + "gate_proj.weight"], s[q + "up_proj.weight"], s[q + "down_proj.weight"] = (
            mlp.w1.weight,
            mlp.w3.weight,
            mlp.w2.weight,
        )
    with torch.device("meta"):
        hf = DeepseekV3ForCausalLM(hcfg)
    missing, unexpected = hf.load_state_dict({k: v.detach() for k, v in s.items()}, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(
            f"weight mapping to transformers: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    device = model.embed.weight.device
    rotary = type(hf.model.rotary_emb)(hcfg, device=device)
    hf.model.rotary_emb = rotary
    for name, buf in list(hf.named_buffers()):
        if buf.is_meta:
            raise RuntimeError(f"transformers buffer {name} left on the meta device")
    return hf.eval()


def hf_generate(hf, batch: int, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(batch)
    prompts = torch.stack([torch.randint(0, vocab, (prompt_len,), generator=g) for _ in range(batch)])
    x = prompts.to(hf.device)
    mask = torch.ones_like(x)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=mask)
    with torch.inference_mode():

        def timed(n: int):
            sync(hf.device)
            t0 = time.perf_counter()
            out = hf.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
            sync(hf.device)
            return time.perf_counter() - t0, out

        first = min(timed(1)[0], timed(1)[0])
        total, out = timed(new_tokens)
    # decode time: the whole generate minus its prefill and first token
    return {
        "ttft_s": first,
        "decode_s": total - first,
        "tokens": batch * (new_tokens - 1),
        "outputs": out[:, prompt_len:].tolist(),
    }


# ---- expert store ---------------------------------------------------------------------------------------
class Residency:
    """Swap a model's routed experts between resident (the original modules) and a tiered store."""

    def __init__(self, model: Transformer, pin: bool):
        self.model = model
        self.original = {
            layer.layer_id: layer.ffn.experts for layer in model.layers if isinstance(layer.ffn, MoE)
        }
        self.host = HostTier(None, pin=pin)
        t0 = time.perf_counter()
        seed_tier(self.host, expert_weights(model))
        self.seed_s = time.perf_counter() - t0
        w = next(iter(self.original.values()))
        self.shapes = {n: tuple(getattr(w, n).shape[1:]) for n in WEIGHT_NAMES}
        self.dtype, self.device = w.w1.dtype, w.w1.device

    def attach(self, budget: float, policy: str, counts: dict | None) -> ExpertStore:
        cfg = self.model.config
        slots = max(cfg.n_activated_experts, round(budget * cfg.n_routed_experts))
        kwargs = {"half_life": HALF_LIFE} if policy == "decayed" else {}
        store = ExpertStore(
            list(self.original),
            cfg.n_routed_experts,
            self.shapes,
            gpu_slots=slots,
            tiers=[self.host],
            dtype=self.dtype,
            device=self.device,
            policy=policy,
            policy_kwargs=kwargs,
        )
        for layer in self.model.layers:
            if layer.layer_id in self.original:
                layer.ffn.experts = TieredRoutedExperts(store, layer.layer_id)
        store.warm(plan_placement(counts or {}, slots, 0, list(self.original), cfg.n_routed_experts))
        store.reset_counters()
        return store

    def detach(self) -> None:
        for layer in self.model.layers:
            if layer.layer_id in self.original:
                layer.ffn.experts = self.original[layer.layer_id]


class TraceReplay:
    """Make the routers choose the experts a trained model chose (recorded trace), token by token in order:
    a randomly initialised model routes almost uniformly, which no trained model does."""

    def __init__(self, model: Transformer, trace: np.ndarray):
        self.trace = torch.from_numpy(trace.astype(np.int64))
        self.pos = 0
        routers = model.routers()
        self.hooks = [r.register_forward_hook(self._hook(i % trace.shape[1])) for i, r in enumerate(routers)]
        self.last = routers[-1]

    def _hook(self, trace_layer: int):
        def hook(module, inputs, output):
            weights, indices = output
            n = indices.shape[0]
            rows = (torch.arange(n) + self.pos) % len(self.trace)
            new = self.trace[rows, trace_layer].to(indices.device)
            if module is self.last:
                self.pos += n
            return weights, new

        return hook

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def trace_counts(
    trace: np.ndarray, first_layer: int, n_layers: int, n_experts: int
) -> dict[int, list[float]]:
    """Routing statistics (what the training worker ships) from the first half of the trace, per model layer."""
    half = trace[: len(trace) // 2]
    out = {}
    for i in range(n_layers):
        layer_trace = half[:, i % trace.shape[1]].ravel()
        out[first_layer + i] = np.bincount(layer_trace, minlength=n_experts).astype(float).tolist()
    return out


# ---- trace simulation -----------------------------------------------------------------------------------
def choose_half_life(trace: np.ndarray, n_experts: int, top_k: int) -> float:
    """The half-life that does best on the trace's first half at 25% residency (the second half is the test)."""
    train = trace[: len(trace) // 2]
    cap = max(top_k, n_experts // 4)
    return max(HALF_LIFES, key=lambda h: simulate(train, cap, lambda _: DecayedFrequency(h)).hit_rate)


def simulate_policies(trace: np.ndarray, n_experts: int, top_k: int) -> None:
    say("### Expert cache hit rate on the recorded routing trace (simulated, per-layer GPU slots)")
    say()
    meta_path = TRACE.with_suffix(".json")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        say(
            f"Trace: {trace.shape[0]} tokens x {trace.shape[1]} MoE layers x top-{trace.shape[2]} of "
            f"{n_experts} experts, from a model trained {meta['train_steps']} steps ({meta['train_minutes']} min, "
            f"CPU) on the standard library's source, loss {meta['first_loss']} -> {meta['final_loss']}; recorded "
            f"over held-out files. Decayed frequency half-life: {HALF_LIFE:g} tokens, chosen on the first half; "
            "the placement plan's counts come from the first half too; hit rates are over the second half."
        )
        say()
    # the first half warms the placement statistics; simulate on the second half only
    test = trace[len(trace) // 2 :]
    counts = {
        i: np.bincount(trace[: len(trace) // 2, i].ravel(), minlength=n_experts)
        for i in range(trace.shape[1])
    }
    say("| resident | LRU | LFU | decayed (ours) | decayed + placement plan | Belady (offline bound) |")
    say("| --- | --- | --- | --- | --- | --- |")
    for frac in (1.0, 0.5, 0.25):
        cap = max(top_k, round(frac * n_experts))
        initial = {i: list(np.argsort(-counts[i], kind="stable")[:cap]) for i in counts}
        prior = {i: {e: 4.0 * c / max(1, counts[i].sum()) for e, c in enumerate(counts[i])} for i in counts}
        r = [
            simulate(test, cap, lambda _: LRU()),
            simulate(test, cap, lambda _: LFU()),
            simulate(test, cap, lambda _: DecayedFrequency(HALF_LIFE)),
            simulate(test, cap, lambda i, p=prior: DecayedFrequency(HALF_LIFE, prior=p[i]), initial=initial),
            simulate(test, cap, belady_factory(test)),
        ]
        say(f"| {frac:.0%} ({cap} of {n_experts}) | " + " | ".join(f"{x.hit_rate:.3f}" for x in r) + " |")
    say()


# ---- main -----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--ttft-prompt", type=int, default=512)
    ap.add_argument("--hf-batches", default="1,8")
    ap.add_argument("--hf-new-tokens", type=int, default=16)
    ap.add_argument("--store-tokens", type=int, default=32)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd layers under graphs")
    ap.add_argument("--simulate-only", action="store_true")
    ap.add_argument("--sections", default="decode,ttft,hf,store,simulate")
    ap.add_argument(
        "--variants",
        default="eager,graphs-ref,graphs",
        help="decode variants: eager, graphs-ref (CUDA graphs over the model's reference paths), graphs "
        "(CUDA graphs over the serving fast paths), compile; each eager/graphs one on the fast paths",
    )
    ap.add_argument("--kernels", action="store_true", help="count GPU kernels of one eager decode step")
    ap.add_argument(
        "--no-pin", action="store_true", help="host tier in pageable memory (pinning 29 GB takes ~50 s)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    trace = np.load(TRACE)["trace"] if TRACE.is_file() else None
    global HALF_LIFE
    if trace is not None:
        HALF_LIFE = choose_half_life(trace, 64, trace.shape[2])
    if args.simulate_only:
        if trace is None:
            sys.exit(f"no trace at {TRACE}: run bench/record_routing_trace.py first")
        simulate_policies(trace, 64, trace.shape[2])
        _write(args.out)
        return

    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    cfg = ModelConfig.from_preset(args.preset, mtp_depth=0)
    say(
        f"## bench_serve: preset {args.preset}, {args.dtype}, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    say(f"torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say()
    t0 = time.perf_counter()
    model = build_model(cfg, device, dtype)
    sync(device)
    pb = param_bytes(model)
    eb = expert_bytes(model)
    say(
        f"Model built on {device} in {time.perf_counter() - t0:.1f} s: {pb['total'] / 1e9:.2f} GB of weights "
        f"({pb['experts'] / 1e9:.2f} GB routed experts, {pb['dense'] / 1e9:.2f} GB other than experts and "
        f"embedding); one expert {eb / 1e6:.1f} MB."
    )
    say()
    batches = [int(b) for b in args.batches.split(",")]
    max_batch = max(batches)
    size = torch.empty((), dtype=dtype).element_size()
    moe_layers = cfg.n_layers - cfg.n_dense_layers
    results: dict = {}

    def engine_for(
        graphs: bool, compile_layers: bool = False, max_seqs: int = max_batch, fast: bool = True
    ) -> LLMEngine:
        return LLMEngine(
            model,
            EngineConfig(
                max_num_seqs=max_seqs,
                block_size=16,
                max_model_len=1024,
                use_cuda_graphs=graphs,
                compile_layers=compile_layers,
                fast_decode=fast,
            ),
        )

    sections = set(args.sections.split(","))
    wanted = args.variants.split(",") + (["compile"] if args.compile else [])
    # (row name, CUDA graphs, torch.compile, serving fast paths); the first is the reference for token equality
    table = {
        "graphs-ref": ("CUDA graphs, reference paths (before)", True, False, False),
        "eager-ref": ("eager, reference paths", False, False, False),
        "eager": ("eager (no graphs)", False, False, True),
        "graphs": ("CUDA graphs, fast paths", True, False, True),
        "compile": ("compile + CUDA graphs", True, True, True),
    }
    variants = []
    if "decode" in sections:
        for key, v in table.items():
            if key in wanted and (device.type == "cuda" or not v[1]):
                variants.append(v)
    if args.kernels and device.type == "cuda":
        kernel_counts(model, engine_for, args.prompt_len)
    say("### Decode throughput (paged latent cache, absorbed MLA, greedy)")
    say()
    say(
        f"Prompt {args.prompt_len} random tokens, {args.new_tokens} new tokens per sequence; decode time excludes "
        "the prefill. Bytes per step = weights other than routed experts and embedding + the distinct experts the "
        "step's tokens route to (measured per layer) + the latent KV read + the embedding rows; roofline "
        f"{ROOFLINE_GBS / 1000:.1f} TB/s (H200 datasheet)."
    )
    say()
    say(
        "| engine | batch | decode tok/s | ms/step | distinct experts/layer | GB read/step | GB/s | of roofline "
        "| greedy tokens equal to the first row's |"
    )
    say("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    first_outputs: dict[int, list] = {}
    uniq_cache: dict[int, float] = {}
    ours_outputs: dict[int, list] = {}
    for name, graphs, comp, fast in variants:
        try:
            engine = engine_for(graphs, comp, fast=fast)
            for b in batches:
                if b not in uniq_cache:
                    uniq_cache[b] = unique_experts_per_step(model, engine, b, args.prompt_len)
                decode_run(engine, b, args.prompt_len, 4, cfg.vocab_size)  # warm-up (graph capture)
                r = decode_run(engine, b, args.prompt_len, args.new_tokens, cfg.vocab_size)
                ctx = args.prompt_len + args.new_tokens / 2
                nbytes = step_bytes(pb, eb, moe_layers, uniq_cache[b], b, ctx, cfg, size)
                step_s = r["decode_s"] / r["steps"]
                gbs = nbytes / step_s / 1e9
                results[(name, b)] = r["tokens"] / r["decode_s"]
                ours_outputs[b] = r["outputs"]
                ref = first_outputs.setdefault(b, r["outputs"])
                # tokens before each sequence's first difference (greedy: one change alters all after it)
                equal = sum(
                    next((i for i, (x, y) in enumerate(zip(a, c, strict=False)) if x != y), len(a))
                    for a, c in zip(ref, r["outputs"], strict=True)
                )
                total = sum(len(a) for a in ref)
                say(
                    f"| {name} | {b} | {r['tokens'] / r['decode_s']:.1f} | {step_s * 1e3:.2f} | {uniq_cache[b]:.1f} | "
                    f"{nbytes / 1e9:.2f} | {gbs:.0f} | {gbs / ROOFLINE_GBS:.1%} | {equal}/{total} |"
                )
            del engine
        except Exception:
            say(f"| {name} | failed: {traceback.format_exc(limit=2).splitlines()[-1][:150]} |")
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    say()

    if "uniq" in sections:
        engine = engine_for(False)
        counted = {b: unique_experts_per_step(model, engine, b, args.prompt_len) for b in batches}
        say(
            "Distinct routed experts per MoE layer in one decode step (distinct random prompts): "
            + ", ".join(f"batch {b}: {u:.1f}" for b, u in counted.items())
            + "."
        )
        say()
        del engine
    best = {b: max((v for (n, bb), v in results.items() if bb == b), default=None) for b in batches}
    try:
        if "ttft" not in sections:
            raise _Skip
        engine = engine_for(device.type == "cuda", False, max_seqs=8)
        t = ttft(engine, args.ttft_prompt, cfg.vocab_size)
        t_short = ttft(engine, args.prompt_len, cfg.vocab_size)
        say(
            f"Time to first token (one request, engine idle, prefill + first token): {t * 1e3:.1f} ms at "
            f"{args.ttft_prompt} prompt tokens, {t_short * 1e3:.1f} ms at {args.prompt_len}."
        )
        say()
        del engine
    except _Skip:
        pass
    except Exception:
        traceback.print_exc()
        say(f"TTFT failed: {traceback.format_exc(limit=1).splitlines()[-1][:150]}")

    # Hugging Face transformers on the same weights
    if "hf" in sections:
        hf_section(model, args, cfg, best, ours_outputs)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "store" in sections:
        store_section(model, args, cfg, device, trace, moe_layers)
    if trace is not None and "simulate" in sections:
        simulate_policies(trace, 64, trace.shape[2])
    _write(args.out)


class _Skip(Exception):
    pass


def kernel_counts(model, engine_for, prompt_len: int) -> None:
    """GPU kernels launched by one eager decode step at batch 1, reference vs fast paths (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    say("### GPU kernels per decode step (batch 1, eager, torch.profiler)")
    say()
    say("| paths | kernels per step | per layer | GPU busy ms (sum of kernel times) |")
    say("| --- | --- | --- | --- |")
    for name, fast in (("reference", False), ("fast", True)):
        try:
            engine = engine_for(False, fast=fast, max_seqs=1)
            seq = engine.add_request(
                list(range(1, prompt_len + 1)), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
            )
            engine.step()
            engine.step()
            sync(engine.device)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                engine.step()
                sync(engine.device)
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.device_time for e in kernels) / 1e3
            n_layers = model.config.n_layers
            say(f"| {name} | {len(kernels)} | {len(kernels) / n_layers:.0f} | {busy:.2f} |")
            engine.abort(seq)
            del engine
        except Exception:
            traceback.print_exc()
            say(f"| {name} | failed: {traceback.format_exc(limit=1).splitlines()[-1][:150]} |")
    say()


def hf_section(model, args, cfg, best, ours_outputs) -> None:
    say("### Hugging Face transformers `DeepseekV3ForCausalLM.generate` on the same weights")
    say()
    try:
        import transformers

        hf = hf_from_ours(model)
        say(
            f"transformers {transformers.__version__}, experts implementation "
            f"`{getattr(hf.config, '_experts_implementation', None)}`, attention `{hf.config._attn_implementation}`,"
            f" greedy, {args.hf_new_tokens} new tokens after a {args.prompt_len}-token prompt."
        )
        say()
        say(
            "| batch | HF decode tok/s | HF TTFT ms | ours decode tok/s | speed-up | greedy tokens equal to ours |"
        )
        say("| --- | --- | --- | --- | --- | --- |")
        for b in [int(x) for x in args.hf_batches.split(",")]:
            hf_generate(hf, b, args.prompt_len, 2, cfg.vocab_size)  # warm-up
            r = hf_generate(hf, b, args.prompt_len, args.hf_new_tokens, cfg.vocab_size)
            tps = r["tokens"] / r["decode_s"]
            ours = best.get(b)
            agree = "-"
            if b in ours_outputs:
                mine = ours_outputs[b]
                n = args.hf_new_tokens
                same = [
                    next((i for i in range(n) if i >= len(m) or m[i] != h[i]), n)
                    for m, h in zip(mine, r["outputs"], strict=False)
                ]
                agree = f"first {int(np.median(same))} of {n} (median over sequences)"
            speed = f"{ours / tps:.1f}x" if ours else "-"
            say(f"| {b} | {tps:.1f} | {r['ttft_s'] * 1e3:.1f} | {ours:.1f} | {speed} | {agree} |")
        del hf
    except Exception:
        traceback.print_exc()
        say(f"transformers baseline failed: {traceback.format_exc(limit=2).splitlines()[-1][:200]}")
    say()


def store_section(model, args, cfg, device, trace, moe_layers) -> None:
    say("### Tiered expert store: decode at 100/50/25% of experts in GPU slots (the rest in host memory)")
    say()
    try:
        res = Residency(model, pin=device.type == "cuda" and not args.no_pin)
        say(
            f"Host tier seeded with all {len(res.original) * cfg.n_routed_experts} experts in {res.seed_s:.1f} s. "
            "Eager decode (a miss copies the expert host -> GPU on the critical path), batch 1, "
            f"{args.store_tokens} tokens after a {args.prompt_len}-token prompt; GPU hit rate over decode steps only."
        )
        say()
        routings = [("own (random init)", None)]
        if (
            trace is not None
            and trace.shape[2] == cfg.n_activated_experts
            and int(trace.max()) < cfg.n_routed_experts
        ):
            routings.append(("replayed trained trace", trace))
        say("| routing | resident | policy | decode tok/s | GPU hit rate |")
        say("| --- | --- | --- | --- | --- |")
        for rname, tr in routings:
            replay = TraceReplay(model, tr) if tr is not None else None
            counts = (
                trace_counts(tr, cfg.n_dense_layers, moe_layers, cfg.n_routed_experts)
                if tr is not None
                else None
            )
            if replay is not None:
                replay.pos = len(tr) // 2  # the plan saw the first half; decode replays the second
            for frac in (1.0, 0.5, 0.25):
                for policy in ("lru", "lfu", "decayed") if frac < 1 else ("lru",):
                    store = res.attach(frac, policy, counts)
                    engine = LLMEngine(
                        model,
                        EngineConfig(
                            max_num_seqs=1, block_size=16, max_model_len=1024, use_cuda_graphs=False
                        ),
                    )
                    g = torch.Generator().manual_seed(5)
                    prompt = torch.randint(0, cfg.vocab_size, (args.prompt_len,), generator=g).tolist()
                    seq = engine.add_request(
                        prompt, SamplingParams(max_tokens=args.store_tokens, temperature=0.0, ignore_eos=True)
                    )
                    engine.step()
                    store.reset_counters()
                    sync(device)
                    t0 = time.perf_counter()
                    while engine.has_work():
                        engine.step()
                    sync(device)
                    dt = time.perf_counter() - t0
                    tps = (seq.num_output_tokens - 1) / dt
                    say(
                        f"| {rname} | {frac:.0%} ({store.gpu_slots}) | {policy if frac < 1 else '-'} | {tps:.1f} | "
                        f"{store.hit_rate():.3f} |"
                    )
                    res.detach()
                    del store, engine
            if replay is not None:
                replay.remove()
    except Exception:
        traceback.print_exc()
        say(f"expert store bench failed: {traceback.format_exc(limit=2).splitlines()[-1][:200]}")
    say()


def _write(out: str | None) -> None:
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_serve.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
