"""Record routing traces from a trained model (CPU, a few minutes): train a small MoE with lite's routing shape
(64 routed experts, top-6) on the standard library's source, then record every token's expert choices in every
MoE layer over held-out files, in order, and save them to bench/traces/routing_trace.npz.

    .venv/bin/python bench/record_routing_trace.py --minutes 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from moe_core.config import ModelConfig
from moe_core.data.corpus import stdlib_sources
from moe_core.data.tokenizer import train_tokenizer
from moe_core.model import Transformer

OUT = Path(__file__).parent / "traces"


def trace_model_config(vocab: int) -> ModelConfig:
    # lite's routing (64 experts, top-6, 1 group, 2 shared) on a trunk small enough to train on two cores
    return ModelConfig(
        vocab_size=vocab,
        dim=128,
        n_layers=5,
        n_dense_layers=1,
        dense_inter_dim=384,
        n_heads=4,
        q_lora_rank=0,
        kv_lora_rank=32,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        n_routed_experts=64,
        n_shared_experts=2,
        n_activated_experts=6,
        moe_inter_dim=64,
        n_expert_groups=1,
        n_limited_groups=1,
        route_scale=1.0,
        max_seq_len=256,
        mtp_depth=0,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--trace-tokens", type=int, default=20000)
    args = ap.parse_args()
    torch.manual_seed(0)
    files = stdlib_sources(6_000_000)
    texts = [d.decode() for _, d in files]
    held_out, train_texts = texts[::10], [t for i, t in enumerate(texts) if i % 10]
    tok = train_tokenizer(train_texts[:400], vocab_size=4096)
    ids = np.array([i for t in train_texts for i in tok.encode(t).ids], dtype=np.int64)
    cfg = trace_model_config(tok.get_vocab_size())
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    rng = np.random.default_rng(0)
    start, step, losses = time.time(), 0, []
    while time.time() - start < args.minutes * 60:
        at = rng.integers(0, len(ids) - args.seq - 1, args.batch)
        x = torch.from_numpy(np.stack([ids[a : a + args.seq + 1] for a in at]))
        out = model.loss(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        model.update_router_bias()  # auxiliary-loss-free balancing, as the training worker does
        losses.append(out.lm_loss.item())
        step += 1
    model.eval()
    choices: dict[int, list[torch.Tensor]] = {}
    hooks = [
        r.register_forward_hook(lambda mod, inp, out, i=i: choices.setdefault(i, []).append(out[1].clone()))
        for i, r in enumerate(model.routers())
    ]
    n = 0
    with torch.no_grad():
        for text in held_out:
            seq = tok.encode(text).ids[: cfg.max_seq_len]
            if len(seq) < 16:
                continue
            model(torch.tensor([seq]))
            n += len(seq)
            if n >= args.trace_tokens:
                break
    for h in hooks:
        h.remove()
    trace = np.stack([torch.cat(choices[i]).numpy() for i in sorted(choices)], axis=1).astype(np.uint8)
    OUT.mkdir(exist_ok=True)
    np.savez_compressed(OUT / "routing_trace.npz", trace=trace)
    meta = {
        "what": "expert choices [tokens, moe_layers, top_k] of a trained model over held-out stdlib files, in order",
        "config": cfg.to_dict(),
        "train_steps": step,
        "train_minutes": args.minutes,
        "first_loss": round(float(np.mean(losses[:10])), 3),
        "final_loss": round(float(np.mean(losses[-10:])), 3),
        "tokens": int(trace.shape[0]),
    }
    (OUT / "routing_trace.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "config"}))


if __name__ == "__main__":
    main()
