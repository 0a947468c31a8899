"""The paged latent cache: MLA's compressed kv latent and roped key per token per layer, in fixed-size blocks.

Per token and layer it holds kv_lora_rank + qk_rope_head_dim elements - never full keys and values. The model
calls `update` (the `moe_core.model.LatentCache` protocol) once per layer; the model runner sets the step's
slot mapping first. Slot tensors live on the device and are refilled in place, so a CUDA graph captured over a
step replays correctly for any block tables of the same shape. One extra slot past the last block takes the
writes of padding tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moe_core.config import ModelConfig


class PagedLatentCache:
    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.num_slots = num_blocks * block_size
        self.scratch_slot = self.num_slots
        rows = self.num_slots + 1
        r = config.kv_lora_rank
        # One row per slot holds [c_kv | k_pe], so the fast path writes and gathers both with one kernel each.
        self.kv = torch.zeros(config.n_layers, rows, r + config.qk_rope_head_dim, dtype=dtype, device=device)
        self.c_kv, self.k_pe = self.kv[..., :r], self.kv[..., r:]
        self.write_slots: Tensor | None = None  # [B*T]
        self.read_slots: Tensor | None = None  # [B, S]
        self.mask: Tensor | None = None  # [B, 1, T, S] bool

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return config.latent_cache_dim * config.n_layers * itemsize

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def set_step(self, write_slots: Tensor, read_slots: Tensor, mask: Tensor) -> None:
        self.write_slots, self.read_slots, self.mask = write_slots, read_slots, mask

    def _check_step(self) -> None:
        if self.write_slots is None:
            raise RuntimeError(
                "PagedLatentCache.update before set_step: the model runner sets slots per step"
            )

    def update_joint(self, layer_id: int, kv: Tensor, start_pos) -> tuple[Tensor, Tensor]:
        """The fast path's update: kv [B, T, kv_lora_rank + rope] in, ([B, S, same], mask) out."""
        self._check_step()
        layer = self.kv[layer_id]
        layer.index_copy_(0, self.write_slots, kv.reshape(-1, kv.shape[-1]).to(layer.dtype))
        return layer[self.read_slots], self.mask

    def update(self, layer_id: int, c_kv: Tensor, k_pe: Tensor, start_pos) -> tuple[Tensor, Tensor, Tensor]:
        self._check_step()
        c_layer, pe_layer = self.c_kv[layer_id], self.k_pe[layer_id]
        c_layer.index_copy_(0, self.write_slots, c_kv.reshape(-1, c_kv.shape[-1]).to(c_layer.dtype))
        pe_layer.index_copy_(0, self.write_slots, k_pe.reshape(-1, k_pe.shape[-1]).to(pe_layer.dtype))
        return c_layer[self.read_slots], pe_layer[self.read_slots], self.mask


def step_slots(
    block_tables: list[list[int]],
    starts: list[int],
    new_lens: list[int],
    block_size: int,
    scratch_slot: int,
    num_queries: int,
    context_len: int,
    num_rows: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step's slot mapping, built on the host: (write [R*T], read [R, S], mask [R, 1, T, S]).

    Row b writes its tokens at positions starts[b] .. starts[b] + new_lens[b] - 1 and reads positions
    0 .. context_len - 1; positions past its own context read the scratch slot and are masked out, and padding
    tokens write to the scratch slot. Rows past len(block_tables) (padding up to num_rows, the batch size of a
    captured graph) attend to position 0 only, so no softmax row is empty.
    """
    num_rows = num_rows or len(block_tables)
    pad = num_rows - len(block_tables)
    width = max(1, max((len(t) for t in block_tables), default=1))
    tables = torch.zeros(num_rows, width, dtype=torch.long)
    for b, t in enumerate(block_tables):
        tables[b, : len(t)] = torch.tensor(t, dtype=torch.long)
    start = torch.tensor(list(starts) + [0] * pad, dtype=torch.long)
    n_new = torch.tensor(list(new_lens) + [0] * pad, dtype=torch.long)
    ctx = start + n_new
    if int(ctx.max()) > context_len:
        raise ValueError(f"context of {int(ctx.max())} tokens exceeds the step's context_len {context_len}")
    p = torch.arange(context_len)
    slots = tables[:, (p // block_size).clamp(max=width - 1)] * block_size + p % block_size  # [R, S]
    valid = p[None] < ctx[:, None]
    read = torch.where(valid, slots, scratch_slot)
    t = torch.arange(num_queries)
    q_pos = start[:, None] + t[None]  # [R, T]
    new = t[None] < n_new[:, None]
    write = torch.where(new, slots.gather(1, q_pos.clamp(max=context_len - 1)), scratch_slot).flatten()
    mask = (p[None, None] <= q_pos[:, :, None]) & (valid[:, None, :] | (p == 0)[None, None, :])
    return write, read, mask.unsqueeze(1)
