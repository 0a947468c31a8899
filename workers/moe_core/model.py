"""The DeepSeek-V3-style MoE transformer that both workers run: MLA, sigmoid group-limited router, routed
experts on grouped GEMM, shared experts, dense first layers and multi-token prediction, in plain PyTorch.

Conventions (read docs/model.md for the whole contract):
- `Transformer.forward(tokens, start_pos=0, cache=None)`: without a cache, the naive MLA path (training,
  prefill with causal attention over the given tokens); with a `LatentCache`, the absorbed path that caches
  only the normalised kv latent and the roped key.
- `start_pos` is an int (all sequences at the same position) or a LongTensor[B] of per-sequence positions;
  token t of sequence b sits at position start_pos[b] + t (RoPE and causality follow it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_core.config import ModelConfig

StartPos = int | Tensor


class PositionError(ValueError):
    """Tokens placed outside the positions the model (or the cache) was built for."""


def derived(module: nn.Module, key: str, sources: tuple[Tensor, ...], build) -> Tensor:
    """A tensor computed from parameters once (a concatenation, an fp32 copy, a reshaped absorbed weight) and
    kept until a source changes (its storage or its version counter), so a decode step reads it instead of
    rebuilding it. Used by the serving fast path only (`fast_decode`); not part of the state dict. A CUDA graph
    captured over it keeps reading the copy it captured: recapture after changing weights in place."""
    stamp = tuple((t.data_ptr(), t._version) for t in sources)
    cache = module.__dict__.setdefault("_derived", {})
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        with torch.no_grad():
            hit = cache[key] = (stamp, build())
    return hit[1]


# ---------------------------------------------------------------------------------------------------------
# Norm and rotary embedding
# ---------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    fast_decode: bool = False  # serving: no fp32 casts around the fused kernel

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # fp32 statistics whatever the activation dtype, as DeepSeek-V3 does.
        if self.fast_decode and self.weight.dtype == x.dtype:
            # The fused kernel accumulates in fp32 for bf16 input: no cast kernels in and out.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the decoupled RoPE part of q and k, kept in fp32 even when the model is cast."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self.register_buffer("cos", torch.empty(max_seq_len, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, head_dim // 2), persistent=False)
        self.reset_tables()

    def reset_tables(self) -> None:
        if self.cos.is_meta:
            return
        device = self.cos.device
        inv_freq = 1.0 / (
            self.theta ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        )
        angles = torch.outer(torch.arange(self.max_seq_len, device=device).float(), inv_freq)
        self.cos = angles.cos()
        self.sin = angles.sin()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # A model-wide .to(bfloat16) must not round the tables: positions near max_seq_len would drift.
        self.cos, self.sin = self.cos.float(), self.sin.float()
        return self

    def forward(self, start_pos: StartPos, seqlen: int) -> tuple[Tensor, Tensor]:
        """cos, sin shaped [B or 1, T, 1, head_dim/2] for tokens at start_pos .. start_pos + T - 1."""
        if isinstance(start_pos, int):
            end = start_pos + seqlen
            if start_pos < 0 or end > self.max_seq_len:
                raise PositionError(
                    f"positions {start_pos}..{end - 1} outside [0, max_seq_len {self.max_seq_len})"
                )
            return self.cos[None, start_pos:end, None], self.sin[None, start_pos:end, None]
        positions = start_pos.to(self.cos.device).view(-1, 1) + torch.arange(seqlen, device=self.cos.device)
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) as DeepSeek-V3 does; x is [B, T, H, d]."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class _StepRope:
    """apply_rope's arithmetic in fewer kernels for the serving path: out = x * [c, c] + swap(x) * [-s, s]
    gives x0*c - x1*s and x1*c + x0*s, the same IEEE results. The expanded tables are built by the first layer
    of a step and reused by the others (the memo holds the step's cos/sin, so their identity cannot be reused
    by other tensors while it lives)."""

    memo: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    @classmethod
    def apply(cls, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        m = cls.memo
        if m is None or m[0] is not cos or m[1] is not sin:
            m = cls.memo = (cos, sin, torch.stack((cos, cos), dim=-1), torch.stack((-sin, sin), dim=-1))
        xf = x.float().unflatten(-1, (-1, 2))
        return (xf * m[2] + xf.flip(-1) * m[3]).flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------------------------
# Latent KV cache (absorbed MLA decode)
# ---------------------------------------------------------------------------------------------------------
@runtime_checkable
class LatentCache(Protocol):
    """What the absorbed MLA path needs from a cache; the inference worker plugs in a paged one.

    `update` stores this step's latents for `layer_id` and returns everything the step attends to:
      c_kv_all [B, S, kv_lora_rank], k_pe_all [B, S, qk_rope_head_dim] and a mask broadcastable to
      [B, 1, T, S] - bool (True = may attend) or additive float (0 / -inf).
    c_kv is already RMS-normalised and k_pe already roped, so a cache only stores and gathers.
    """

    def update(
        self, layer_id: int, c_kv: Tensor, k_pe: Tensor, start_pos: StartPos
    ) -> tuple[Tensor, Tensor, Tensor]: ...


class KVLatentCache(nn.Module):
    """Contiguous latent cache (gpt-fast style buffers): [n_layers, max_batch, max_seq, r] + the rope key."""

    def __init__(
        self,
        config: ModelConfig,
        max_batch: int,
        max_seq: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.max_batch, self.max_seq = max_batch, max_seq
        shape = (config.n_layers, max_batch, max_seq)
        self.register_buffer(
            "c_kv", torch.zeros(*shape, config.kv_lora_rank, dtype=dtype, device=device), persistent=False
        )
        self.register_buffer(
            "k_pe", torch.zeros(*shape, config.qk_rope_head_dim, dtype=dtype, device=device), persistent=False
        )

    def reset(self) -> None:
        self.c_kv.zero_()
        self.k_pe.zero_()

    def update(
        self, layer_id: int, c_kv: Tensor, k_pe: Tensor, start_pos: StartPos
    ) -> tuple[Tensor, Tensor, Tensor]:
        bsz, seqlen = c_kv.shape[:2]
        if bsz > self.max_batch:
            raise PositionError(f"batch {bsz} exceeds the cache's max_batch {self.max_batch}")
        device = self.c_kv.device
        if isinstance(start_pos, int):
            end = start_pos + seqlen
            if start_pos < 0 or end > self.max_seq:
                raise PositionError(
                    f"positions {start_pos}..{end - 1} outside the cache's [0, {self.max_seq})"
                )
            self.c_kv[layer_id, :bsz, start_pos:end] = c_kv
            self.k_pe[layer_id, :bsz, start_pos:end] = k_pe
            q_pos = torch.arange(start_pos, end, device=device)[:, None]
            mask = (torch.arange(end, device=device)[None, :] <= q_pos)[None, None]  # [1, 1, T, S]
            return self.c_kv[layer_id, :bsz, :end], self.k_pe[layer_id, :bsz, :end], mask
        positions = start_pos.to(device).view(bsz, 1) + torch.arange(seqlen, device=device)  # [B, T]
        end = int(positions.max()) + 1
        if int(positions.min()) < 0 or end > self.max_seq:
            raise PositionError(f"positions up to {end - 1} outside the cache's [0, {self.max_seq})")
        rows = torch.arange(bsz, device=device)[:, None]
        self.c_kv[layer_id][rows, positions] = c_kv.to(self.c_kv.dtype)
        self.k_pe[layer_id][rows, positions] = k_pe.to(self.k_pe.dtype)
        mask = torch.arange(end, device=device)[None, None, :] <= positions[:, :, None]  # [B, T, S]
        return self.c_kv[layer_id, :bsz, :end], self.k_pe[layer_id, :bsz, :end], mask.unsqueeze(1)


# ---------------------------------------------------------------------------------------------------------
# Multi-Head Latent Attention
# ---------------------------------------------------------------------------------------------------------
class MLA(nn.Module):
    # Pad v to the qk head dim on CUDA so SDPA can take the flash kernel (it needs equal head dims).
    pad_v_for_flash: bool = True
    fast_decode: bool = False  # serving: `_forward_fast` whenever a cache is given

    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        c = config
        self.layer_id = layer_id
        self.n_heads, self.kv_lora_rank = c.n_heads, c.kv_lora_rank
        self.nope, self.rope, self.v_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.q_lora_rank = c.q_lora_rank
        if c.q_lora_rank:
            self.wq_a = nn.Linear(c.dim, c.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(c.q_lora_rank, c.norm_eps)
            self.wq_b = nn.Linear(c.q_lora_rank, c.n_heads * c.qk_head_dim, bias=False)
        else:
            self.wq = nn.Linear(c.dim, c.n_heads * c.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(c.dim, c.kv_lora_rank + c.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(c.kv_lora_rank, c.norm_eps)
        self.wkv_b = nn.Linear(c.kv_lora_rank, c.n_heads * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.wo = nn.Linear(c.n_heads * c.v_head_dim, c.dim, bias=False)
        self.softmax_scale = c.qk_head_dim**-0.5

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: StartPos, cache: LatentCache | None
    ) -> Tensor:
        if self.fast_decode and cache is not None:
            return self._forward_fast(x, cos, sin, start_pos, cache)
        bsz, seqlen, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_lora_rank else self.wq(x)
        q = q.view(bsz, seqlen, self.n_heads, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)
        c_kv, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.rope], dim=-1)
        c_kv = self.kv_norm(c_kv)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin)  # [B, T, 1, rope]: one rope key shared by all heads
        if cache is None:
            out = self._naive(q_nope, q_pe, c_kv, k_pe)
        else:
            out = self._absorbed(q_nope, q_pe, c_kv, k_pe.squeeze(2), start_pos, cache)
        return self.wo(out.flatten(2))

    def _naive(self, q_nope: Tensor, q_pe: Tensor, c_kv: Tensor, k_pe: Tensor) -> Tensor:
        bsz, seqlen, h, _ = q_nope.shape
        kv = self.wkv_b(c_kv).view(bsz, seqlen, h, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, k_pe.expand(-1, -1, h, -1)], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        qk_dim = self.nope + self.rope
        pad = self.pad_v_for_flash and q.is_cuda and self.v_dim < qk_dim
        if pad:
            v = F.pad(v, (0, qk_dim - self.v_dim))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=seqlen > 1, scale=self.softmax_scale)
        if pad:
            out = out[..., : self.v_dim]
        return out.transpose(1, 2)  # [B, T, H, v]

    def _absorbed(
        self,
        q_nope: Tensor,
        q_pe: Tensor,
        c_kv: Tensor,
        k_pe: Tensor,
        start_pos: StartPos,
        cache: LatentCache,
    ) -> Tensor:
        # wkv_b folded into q (for scores) and the output (for values): attention runs in the latent space.
        w = self.wkv_b.weight.view(self.n_heads, self.nope + self.v_dim, self.kv_lora_rank)
        q_lat = torch.einsum("bthd,hdc->bhtc", q_nope, w[:, : self.nope])
        c_all, pe_all, mask = cache.update(self.layer_id, c_kv, k_pe, start_pos)
        c_all, pe_all = c_all.to(q_lat.dtype), pe_all.to(q_lat.dtype)
        scores = torch.einsum("bhtc,bsc->bhts", q_lat, c_all) + torch.einsum("bthr,bsr->bhts", q_pe, pe_all)
        scores = scores.float() * self.softmax_scale
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
        probs = scores.softmax(dim=-1).type_as(q_lat)
        o_lat = torch.einsum("bhts,bsc->bthc", probs, c_all)
        return torch.einsum("bthc,hdc->bthd", o_lat, w[:, self.nope :])

    def _forward_fast(
        self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: StartPos, cache: LatentCache
    ) -> Tensor:
        """The absorbed path in fewer kernels, for serving (decode is bound by kernel count, not bytes): one
        GEMM for the q and kv-a projections, one RoPE for the query heads and the shared key, W_UK and W_UV
        kept contiguous, and the latent and rope parts of the scores as one product over [c_kv | k_pe] (read
        from the cache in one gather when it offers `update_joint`)."""
        bsz, seqlen, _ = x.shape
        h, r, nope, rope = self.n_heads, self.kv_lora_rank, self.nope, self.rope
        first = self.wq_a if self.q_lora_rank else self.wq
        w_in = derived(
            self,
            "w_in",
            (first.weight, self.wkv_a.weight),
            lambda: torch.cat([first.weight, self.wkv_a.weight]),
        )
        q, kv = F.linear(x, w_in).split([first.weight.shape[0], r + rope], dim=-1)
        if self.q_lora_rank:
            q = self.wq_b(self.q_norm(q))
        q_nope, q_pe = q.view(bsz, seqlen, h, nope + rope).split([nope, rope], dim=-1)
        c_kv, k_pe = kv.split([r, rope], dim=-1)
        pe = _StepRope.apply(torch.cat([q_pe, k_pe.unsqueeze(2)], dim=2), cos, sin)  # [B, T, H + 1, rope]
        kv = torch.cat([self.kv_norm(c_kv), pe[:, :, h]], dim=-1)  # what the cache keeps: [B, T, r + rope]
        wkv_b = self.wkv_b.weight
        w_uk = derived(
            self, "w_uk", (wkv_b,), lambda: wkv_b.view(h, nope + self.v_dim, r)[:, :nope].contiguous()
        )
        w_uv = derived(
            self, "w_uv", (wkv_b,), lambda: wkv_b.view(h, nope + self.v_dim, r)[:, nope:].contiguous()
        )
        q_cat = torch.cat([torch.einsum("bthd,hdc->bthc", q_nope, w_uk), pe[:, :, :h]], dim=-1)
        if hasattr(cache, "update_joint"):
            kv_all, mask = cache.update_joint(self.layer_id, kv, start_pos)
        else:
            c_all, pe_all, mask = cache.update(self.layer_id, kv[..., :r], kv[..., r:], start_pos)
            kv_all = torch.cat([c_all, pe_all], dim=-1)
        kv_all = kv_all.to(q_cat.dtype)
        scores = torch.einsum("bthc,bsc->bhts", q_cat, kv_all).float() * self.softmax_scale
        if mask.dtype == torch.bool:
            scores = torch.where(mask, scores, float("-inf"))
        else:
            scores = scores + mask
        probs = scores.softmax(dim=-1).type_as(q_cat)
        o_lat = torch.einsum("bhts,bsc->bthc", probs, kv_all[..., :r])
        return self.wo(torch.einsum("bthc,hdc->bthd", o_lat, w_uv).flatten(2))


# ---------------------------------------------------------------------------------------------------------
# Feed-forward, router and experts
# ---------------------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """SwiGLU feed-forward: the dense layers' FFN and the shared experts."""

    fast_decode: bool = False  # serving: w1 and w3 as one GEMM over a kept concatenation

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.fast_decode:
            w1, w3 = self.w1.weight, self.w3.weight
            gate, up = F.linear(x, derived(self, "w13", (w1, w3), lambda: torch.cat([w1, w3]))).chunk(
                2, dim=-1
            )
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Router(nn.Module):
    """Sigmoid router with group-limited top-k; `bias` steers the choice only (auxiliary-loss-free balancing).

    Per-expert token counts accumulate in `expert_counts` (int64, no grad) until `update_bias` is called;
    the trainer all-reduces them across ranks first.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.n_experts, self.topk = c.n_routed_experts, c.n_activated_experts
        self.n_groups, self.topk_groups = c.n_expert_groups, c.n_limited_groups
        self.route_scale, self.seq_aux_loss_alpha = c.route_scale, c.seq_aux_loss_alpha
        self.weight = nn.Parameter(torch.empty(c.n_routed_experts, c.dim))
        self.register_buffer("bias", torch.zeros(c.n_routed_experts, dtype=torch.float32))
        self.register_buffer(
            "expert_counts", torch.zeros(c.n_routed_experts, dtype=torch.int64), persistent=False
        )
        self.aux_loss: Tensor | None = None
        self.track_load = True
        self.fast_decode = (
            False  # serving: read a kept fp32 copy of the weight instead of casting it per call
        )

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # bias moves by gamma=1e-3 steps: in bf16 those steps would round away.
        self.bias = self.bias.float()
        return self

    def forward(self, x: Tensor, batch_shape: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """x [N, dim] -> (weights [N, k] fp32, indices [N, k] int64)."""
        w = self.weight
        if self.fast_decode and w.dtype != torch.float32:
            w = derived(self, "w32", (w,), lambda: self.weight.float())
        scores = F.linear(x.float(), w.float()).sigmoid()
        choice = scores.detach() + self.bias
        if self.n_groups > 1:
            grouped = choice.view(x.shape[0], self.n_groups, -1)
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            kept = group_scores.topk(self.topk_groups, dim=-1).indices
            keep_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
            choice = grouped.masked_fill(~keep_mask.unsqueeze(-1), float("-inf")).flatten(1)
        indices = choice.topk(self.topk, dim=-1).indices
        weights = scores.gather(1, indices)
        weights = weights / weights.sum(dim=-1, keepdim=True) * self.route_scale
        if self.track_load:
            with torch.no_grad():
                flat = indices.flatten()
                self.expert_counts.scatter_add_(0, flat, torch.ones_like(flat))
        self.aux_loss = None
        if self.training and self.seq_aux_loss_alpha > 0 and batch_shape is not None:
            self.aux_loss = self._sequence_balance_loss(scores, indices, *batch_shape)
        return weights, indices

    def _sequence_balance_loss(self, scores: Tensor, indices: Tensor, bsz: int, seqlen: int) -> Tensor:
        # DeepSeek-V3 eq. 17-20: alpha * sum_i f_i * P_i per sequence, averaged over the batch.
        probs = scores.view(bsz, seqlen, -1)
        probs = (probs / probs.sum(dim=-1, keepdim=True)).mean(dim=1)  # P_i [B, E]
        hits = torch.zeros(bsz, self.n_experts, device=scores.device)
        hits.scatter_add_(1, indices.view(bsz, -1), torch.ones(bsz, seqlen * self.topk, device=scores.device))
        f = hits * (self.n_experts / (self.topk * seqlen))
        return self.seq_aux_loss_alpha * (f * probs).sum(dim=-1).mean()

    @torch.no_grad()
    def update_bias(self, gamma: float, load: Tensor | None = None) -> None:
        load = (self.expert_counts if load is None else load).to(self.bias.device).float()
        self.bias += gamma * torch.sign(load.mean() - load)
        self.expert_counts.zero_()


class _GatherTokens(torch.autograd.Function):
    """x[order // k]: each token copied to its k expert slots. The backward sums a token's k slot gradients
    through the inverse permutation (a gather) instead of autograd's generic scatter-add of indexing."""

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, inverse: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x[order // k]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad[inverse].unflatten(0, (-1, ctx.k)).sum(dim=1), None, None, None


class _Permute(torch.autograd.Function):
    """y[inverse] for a permutation: the backward is the gather by the forward permutation `order`."""

    @staticmethod
    def forward(ctx, y: Tensor, inverse: Tensor, order: Tensor) -> Tensor:
        ctx.save_for_backward(order)
        return y[inverse]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (order,) = ctx.saved_tensors
        return grad[order], None, None


def grouped_mm_available() -> bool:
    return hasattr(torch, "_grouped_mm")


class RoutedExperts(nn.Module):
    """The routed experts as stacked SwiGLU weights: w1/w3 [E, inter, dim], w2 [E, dim, inter].

    forward(x [N, dim], topk_idx [N, k], topk_weight [N, k]) -> [N, dim]. Tokens are sorted by expert, run
    through `torch._grouped_mm` (one kernel per projection for all experts) or a per-expert loop (the
    reference), unsorted, and combined with their routing weights.
    `use_grouped_mm`: None = grouped on CUDA in bf16 when the op exists; True/False forces a path.
    """

    def __init__(self, n_experts: int, dim: int, inter_dim: int):
        super().__init__()
        self.n_experts = n_experts
        self.w1 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, inter_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        self.use_grouped_mm: bool | None = None
        self.fast_decode = False  # serving: `_forward_fast`

    def _grouped(self, x: Tensor) -> bool:
        if self.use_grouped_mm is not None:
            return self.use_grouped_mm
        return grouped_mm_available() and x.is_cuda and x.dtype == torch.bfloat16

    def forward(self, x: Tensor, topk_idx: Tensor, topk_weight: Tensor) -> Tensor:
        if self.fast_decode:
            return self._forward_fast(x, topk_idx, topk_weight)
        n_tokens, k = topk_idx.shape
        flat = topk_idx.flatten()
        order = flat.argsort(stable=True)  # (token, slot) pairs sorted by expert
        counts = torch.zeros(self.n_experts, dtype=torch.int64, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat)
        )
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        x_sorted = _GatherTokens.apply(x, order, inverse, k)
        if self._grouped(x):
            y_sorted = self._forward_grouped(x_sorted, counts)
        else:
            y_sorted = self._forward_loop(x_sorted, counts)
        y = _Permute.apply(y_sorted, inverse, order).view(n_tokens, k, -1)
        # [N,1,k] @ [N,k,dim]: the weighted sum over a token's experts in one batched matmul.
        return torch.bmm(topk_weight.unsqueeze(1).to(y.dtype), y).squeeze(1)

    @torch.no_grad()
    def _forward_fast(self, x: Tensor, topk_idx: Tensor, topk_weight: Tensor) -> Tensor:
        """Inference only, the same arithmetic per expert in fewer kernels and no copy of the weights: the
        training path's torch.cat of w1 and w3 copies every expert of the layer (0.74 GB per lite layer) each
        call, which at decode costs ten times the experts' own reads. Here w1 and w3 are two grouped GEMMs
        over views; the group offsets come from one searchsorted over the sorted expert ids; the unsort is
        one scatter."""
        n_tokens, k = topk_idx.shape
        sorted_ids, order = topk_idx.flatten().sort(stable=True)
        x_sorted = x[order // k]
        if self._grouped(x):
            ids = derived(
                self,
                "ids",
                (self.w1,),  # rebuilt if the weights move to another device
                lambda: torch.arange(self.n_experts, device=x.device, dtype=sorted_ids.dtype),
            )
            offs = torch.searchsorted(sorted_ids, ids, right=True, out_int32=True)
            gate = torch._grouped_mm(x_sorted, self.w1.transpose(-2, -1), offs=offs)
            up = torch._grouped_mm(x_sorted, self.w3.transpose(-2, -1), offs=offs)
            y_sorted = torch._grouped_mm(F.silu(gate) * up, self.w2.transpose(-2, -1), offs=offs)
        else:
            counts = torch.bincount(sorted_ids, minlength=self.n_experts)
            y_sorted = self._forward_loop(x_sorted, counts)
        y = torch.empty_like(y_sorted)
        y[order] = y_sorted
        return torch.bmm(topk_weight.unsqueeze(1).to(y.dtype), y.view(n_tokens, k, -1)).squeeze(1)

    def _forward_grouped(self, x: Tensor, counts: Tensor) -> Tensor:
        offs = counts.cumsum(0).to(torch.int32)
        # One GEMM for w1 and w3 together: N = 2 * inter keeps the small per-expert GEMMs busier, and the
        # concatenation (a copy of w1 and w3) costs far less than a second grouped kernel.
        w13 = torch.cat([self.w1, self.w3], dim=1)
        gate, up = torch._grouped_mm(x, w13.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
        return torch._grouped_mm(F.silu(gate) * up, self.w2.transpose(-2, -1), offs=offs)

    def _forward_loop(self, x: Tensor, counts: Tensor) -> Tensor:
        outs = []
        for e, xe in enumerate(x.split(counts.tolist())):
            outs.append((F.silu(xe @ self.w1[e].T) * (xe @ self.w3[e].T)) @ self.w2[e].T)
        return torch.cat(outs)


class MoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = Router(config)
        self.experts = RoutedExperts(config.n_routed_experts, config.dim, config.moe_inter_dim)
        self.shared = (
            MLP(config.dim, config.n_shared_experts * config.moe_inter_dim)
            if config.n_shared_experts
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, dim = x.shape
        flat = x.reshape(-1, dim)
        weights, indices = self.gate(flat, (bsz, seqlen))
        y = self.experts(flat, indices, weights)
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.view(bsz, seqlen, dim)


# ---------------------------------------------------------------------------------------------------------
# Blocks, MTP and the transformer
# ---------------------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = MLA(config, layer_id)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        is_moe = layer_id >= config.n_dense_layers
        self.ffn: nn.Module = MoE(config) if is_moe else MLP(config.dim, config.dense_inter_dim)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: StartPos, cache: LatentCache | None
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, start_pos, cache)
        return x + self.ffn(self.ffn_norm(x))


class MTPModule(nn.Module):
    """One multi-token-prediction depth (DeepSeek-V3 sec. 2.2): combines the trunk's hidden state at i with
    the embedding of token i+1 and predicts token i+2; embedding and output head are the trunk's."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.hnorm = RMSNorm(config.dim, config.norm_eps)
        self.enorm = RMSNorm(config.dim, config.norm_eps)
        self.proj = nn.Linear(2 * config.dim, config.dim, bias=False)
        self.block = Block(config, layer_id=config.n_layers)  # MoE whenever the trunk has MoE layers
        self.norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, h: Tensor, next_emb: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = self.proj(torch.cat([self.hnorm(h), self.enorm(next_emb)], dim=-1))
        return self.norm(self.block(x, cos, sin, 0, None))


@dataclass
class ModelLoss:
    loss: Tensor  # total: lm + mtp_loss_weight * mtp + balance; call backward on this
    lm_loss: Tensor
    mtp_loss: Tensor | None
    balance_loss: Tensor | None


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rope = RotaryEmbedding(config.qk_rope_head_dim, config.max_seq_len, config.rope_theta)
        self.mtp = nn.ModuleList(MTPModule(config) for _ in range(config.mtp_depth))
        if not self.embed.weight.is_meta:
            self.init_weights()

    # ---- initialisation -------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, base_std: float = 0.02) -> None:
        """torchtitan's DeepSeek-V3 scheme: N(0,1) embeddings; 0.02 for input projections; output projections
        (wo, w2, w3) and router scaled by depth, 0.02 / sqrt(2 * (layer_id + 1)); head std dim^-0.5."""
        nn.init.normal_(self.embed.weight)
        blocks = [(b, b.layer_id) for b in self.layers] + [(m.block, m.block.layer_id) for m in self.mtp]
        for block, layer_id in blocks:
            depth_std = base_std / (2 * (layer_id + 1)) ** 0.5
            attn = block.attn
            for lin in (
                attn.wkv_a,
                attn.wkv_b,
                *((attn.wq_a, attn.wq_b) if attn.q_lora_rank else (attn.wq,)),
            ):
                nn.init.trunc_normal_(lin.weight, std=base_std)
            nn.init.trunc_normal_(attn.wo.weight, std=depth_std)
            ffn = block.ffn
            mlps = [ffn] if isinstance(ffn, MLP) else ([ffn.shared] if ffn.shared is not None else [])
            for mlp in mlps:
                nn.init.trunc_normal_(mlp.w1.weight, std=base_std)
                nn.init.trunc_normal_(mlp.w2.weight, std=depth_std)
                nn.init.trunc_normal_(mlp.w3.weight, std=depth_std)
            if isinstance(ffn, MoE):
                nn.init.trunc_normal_(ffn.experts.w1, std=base_std)
                nn.init.trunc_normal_(ffn.experts.w2, std=depth_std)
                nn.init.trunc_normal_(ffn.experts.w3, std=depth_std)
                nn.init.trunc_normal_(ffn.gate.weight, std=depth_std)
                ffn.gate.bias.zero_()
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        for m in self.mtp:
            nn.init.trunc_normal_(m.proj.weight, std=base_std)
        std = self.config.dim**-0.5
        nn.init.trunc_normal_(self.head.weight, std=std, a=-3 * std, b=3 * std)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute what no checkpoint holds (RoPE tables) and zero the routing counters. Call after
        `to_empty()` on a model built on the meta device: those buffers are uninitialised memory then."""
        self.rope.reset_tables()
        for router in self.routers():
            router.expert_counts.zero_()

    # ---- forward ----------------------------------------------------------------------------------------
    def hidden_states(
        self, tokens: Tensor, start_pos: StartPos = 0, cache: LatentCache | None = None
    ) -> Tensor:
        """The trunk's last hidden states before the final norm, [B, T, dim]."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}")
        if isinstance(start_pos, Tensor) and start_pos.numel() != tokens.shape[0]:
            raise PositionError(f"start_pos has {start_pos.numel()} entries for a batch of {tokens.shape[0]}")
        cos, sin = self.rope(start_pos, tokens.shape[1])
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, start_pos, cache)
        return h

    def forward(self, tokens: Tensor, start_pos: StartPos = 0, cache: LatentCache | None = None) -> Tensor:
        return self.head(self.norm(self.hidden_states(tokens, start_pos, cache)))

    def loss(self, tokens: Tensor, targets: Tensor, ignore_index: int = -100) -> ModelLoss:
        """Next-token loss (targets[b, t] is the token after tokens[b, t]) plus MTP and balance losses."""
        if targets.shape != tokens.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must match tokens {tuple(tokens.shape)}")
        h = self.hidden_states(tokens)
        logits = self.head(self.norm(h))
        lm_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index)
        total = lm_loss
        mtp_loss = None
        if len(self.mtp) and tokens.shape[1] > 1:
            seqlen = tokens.shape[1] - 1
            cos, sin = self.rope(0, seqlen)
            next_emb = self.embed(targets[:, :-1].clamp_min(0))
            mtp_h = self.mtp[0](h[:, :-1], next_emb, cos, sin)
            mtp_logits = self.head(mtp_h)
            mtp_loss = F.cross_entropy(
                mtp_logits.flatten(0, 1).float(), targets[:, 1:].flatten(), ignore_index=ignore_index
            )
            total = total + self.config.mtp_loss_weight * mtp_loss
        aux = [r.aux_loss for r in self.routers() if r.aux_loss is not None]
        balance_loss = torch.stack(aux).sum() if aux else None
        if balance_loss is not None:
            total = total + balance_loss
        return ModelLoss(loss=total, lm_loss=lm_loss, mtp_loss=mtp_loss, balance_loss=balance_loss)

    # ---- routing statistics and the auxiliary-loss-free bias update --------------------------------------
    def routers(self) -> list[Router]:
        """Every MoE layer's router: trunk layers in order, then the MTP block's (if any)."""
        blocks = list(self.layers) + [m.block for m in self.mtp]
        return [b.ffn.gate for b in blocks if isinstance(b.ffn, MoE)]

    def expert_load(self) -> Tensor:
        """Tokens routed to each expert since the last bias update: [n_routers, n_routed_experts] (int64)."""
        routers = self.routers()
        if not routers:
            return torch.zeros(0, self.config.n_routed_experts, dtype=torch.int64)
        return torch.stack([r.expert_counts for r in routers])

    def update_router_bias(self, load: Tensor | None = None) -> None:
        """bias += gamma * sign(mean load - load) for every router, then reset the counts. Pass `load` (e.g.
        the all-reduced `expert_load()`) to use counts other than this process's own."""
        for i, router in enumerate(self.routers()):
            router.update_bias(self.config.bias_update_speed, None if load is None else load[i])

    def set_expert_path(self, grouped: bool | None) -> None:
        """Force grouped GEMM (True) or the per-expert loop (False) in every MoE layer; None = automatic."""
        for module in self.modules():
            if isinstance(module, RoutedExperts):
                module.use_grouped_mm = grouped


def causal_lm_flops_per_token(config: ModelConfig, seqlen: int, active_non_embedding: int) -> float:
    """Training FLOPs per token: 6 x active non-embedding params + causal attention (QK^T and PV, fwd+bwd).

    Attention per token per layer, forward: 2 * H * (qk_head_dim + v_head_dim) * seqlen / 2 (causal: half);
    training is 3x forward. The MTP block is not counted (benchmarks run with mtp_depth=0).
    """
    c = config
    attn = 3 * 2 * c.n_heads * (c.qk_head_dim + c.v_head_dim) * seqlen / 2 * c.n_layers
    return 6 * active_non_embedding + attn


__all__ = [
    "KVLatentCache",
    "LatentCache",
    "MLA",
    "MoE",
    "ModelLoss",
    "PositionError",
    "RoutedExperts",
    "Router",
    "Transformer",
    "causal_lm_flops_per_token",
    "grouped_mm_available",
]
