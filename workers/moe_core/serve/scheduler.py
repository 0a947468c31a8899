"""Continuous batching: which sequences run in the next step (prefill or decode), and which finish.

Each step is either a prefill of newly admitted sequences or one decode token for every running sequence; new
requests join the running batch as soon as they are prefilled, and a finished one leaves it at once. When the
latent cache runs out of blocks, the most recently admitted sequence is preempted and later recomputed.
"""

from __future__ import annotations

from collections import deque

from moe_core.serve.block_manager import BlockManager
from moe_core.serve.sequence import FinishReason, Sequence, SequenceStatus


class SequenceTooLong(ValueError):
    """A sequence can never fit: longer than the model's context or than the whole latent cache."""


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        eos_token_ids: tuple[int, ...] = (),
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = set(eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        limit = min(self.max_model_len, len(self.block_manager.blocks) * self.block_manager.block_size)
        if len(seq) >= limit:
            raise SequenceTooLong(f"prompt of {len(seq)} tokens does not fit a context of {limit}")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The sequences of the next step and whether it is a prefill step."""
        scheduled: list[Sequence] = []
        num_tokens = 0
        while self.waiting and len(self.running) + len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            if scheduled and num_tokens + len(seq) > self.max_num_batched_tokens:
                break
            if not self.block_manager.can_allocate(seq):
                break
            self.block_manager.allocate(seq)
            num_tokens += len(seq) - seq.num_computed_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            scheduled.append(seq)
        if scheduled:
            self.running.extend(scheduled)
            return scheduled, True

        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING:  # preempted to make room for an earlier one
                continue
            while not self.block_manager.can_append(seq):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                self.block_manager.append_slot(seq)
                scheduled.append(seq)
        return scheduled, False

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def postprocess(self, seqs: list[Sequence], token_ids: list[int]) -> list[Sequence]:
        """Append each sequence's new token; returns the sequences that finished with it."""
        finished = []
        for seq, token in zip(seqs, token_ids, strict=True):
            seq.num_computed_tokens = len(seq)
            seq.token_ids.append(token)
            self.block_manager.commit_computed_blocks(seq)
            reason = None
            if (
                token in self.eos_token_ids and not seq.params.ignore_eos
            ) or token in seq.params.stop_token_ids:
                reason = FinishReason.STOP
            elif seq.num_output_tokens >= seq.params.max_tokens or len(seq) >= self.max_model_len:
                reason = FinishReason.LENGTH
            if reason is not None:
                self.finish(seq, reason)
                finished.append(seq)
        return finished

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence (a stop condition, or an abort) and give its blocks back."""
        if seq.is_finished:
            return
        if seq in self.running:
            self.running.remove(seq)
            self.block_manager.deallocate(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
