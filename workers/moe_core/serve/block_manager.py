"""Blocks of the paged latent cache: allocation, reference counts, and a prefix cache of hashed full blocks.

A full block is identified by a hash chained over every token before it and its own tokens, so two requests
that share a prefix share the blocks that hold it. A block whose last user finished keeps its hash and goes to
the back of the free list: it can be found again until it is the least recently used free block and is
reused (evicted).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from moe_core.serve.sequence import Sequence


class OutOfBlocks(RuntimeError):
    """The cache has no free block for a sequence that the scheduler admitted (a scheduler bug)."""


def chain_hash(prev_hash: bytes | None, token_ids: list[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    if prev_hash is not None:
        h.update(prev_hash)
    h.update(b"".join(t.to_bytes(4, "little") for t in token_ids))
    return h.digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None
    token_ids: list[int] = field(default_factory=list)


@dataclass
class PrefixCacheStats:
    queries: int = 0  # full prompt blocks looked up
    hits: int = 0
    evictions: int = 0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need at least one block of at least one token, got {num_blocks} x {block_size}"
            )
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.hash_to_block: dict[bytes, int] = {}
        # free blocks in eviction order: unhashed ones first, then hashed ones least recently used first
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def _take_free_block(self) -> Block:
        if not self.free:
            raise OutOfBlocks("no free block in the latent cache")
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            self.stats.evictions += 1
        block.hash = None
        block.token_ids = []
        block.ref_count = 1
        return block

    def _release(self, block: Block) -> None:
        block.ref_count -= 1
        assert block.ref_count >= 0, f"block {block.block_id} released more often than taken"
        if block.ref_count == 0:
            self.free[block.block_id] = None
            if block.hash is None:
                self.free.move_to_end(block.block_id, last=False)

    def _cacheable_prompt_blocks(self, seq: Sequence) -> int:
        # the last prompt token is always computed again (its logits pick the first output token), so only
        # full blocks that end before it can come from the cache, and no shared block is ever written.
        return (seq.num_prompt_tokens - 1) // self.block_size

    def _match_prefix(self, seq: Sequence) -> list[int]:
        matched: list[int] = []
        prev: bytes | None = None
        for i in range(self._cacheable_prompt_blocks(seq)):
            tokens = seq.block_tokens(i, self.block_size)
            h = chain_hash(prev, tokens)
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            matched.append(block_id)
            prev = h
        return matched

    def can_allocate(self, seq: Sequence) -> bool:
        matched = self._match_prefix(seq)
        reusable_free = sum(1 for b in matched if self.blocks[b].ref_count == 0)
        needed = seq.num_blocks(self.block_size) - len(matched)
        return needed <= self.num_free_blocks - reusable_free

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence its blocks, reusing cached prefix blocks; sets its computed-token count."""
        assert not seq.block_table, f"sequence {seq.seq_id} already holds blocks"
        matched = self._match_prefix(seq)
        self.stats.queries += self._cacheable_prompt_blocks(seq)
        self.stats.hits += len(matched)
        for block_id in matched:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(block.hash)
        for _ in range(seq.num_blocks(self.block_size) - len(matched)):
            seq.block_table.append(self._take_free_block().block_id)
        seq.num_computed_tokens = len(matched) * self.block_size
        seq.num_cached_prompt_tokens = seq.num_computed_tokens

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            self._release(self.blocks[block_id])
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def can_append(self, seq: Sequence) -> bool:
        """Room for the token the next decode step of `seq` will write."""
        return len(seq.block_table) * self.block_size > len(seq) - 1 or self.num_free_blocks > 0

    def append_slot(self, seq: Sequence) -> None:
        """Give the sequence the block its last token goes to, before the step that writes it."""
        if len(seq.block_table) * self.block_size < len(seq):
            seq.block_table.append(self._take_free_block().block_id)

    def commit_computed_blocks(self, seq: Sequence) -> None:
        """Register the hashes of blocks that are full and computed, so later requests can share them."""
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // self.block_size):
            block = self.blocks[seq.block_table[i]]
            tokens = seq.block_tokens(i, self.block_size)
            block.hash = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, tokens)
            block.token_ids = tokens
            # a block computed twice (two requests admitted before either committed) stays private
            self.hash_to_block.setdefault(block.hash, block.block_id)
            seq.block_hashes.append(block.hash)
