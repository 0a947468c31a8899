"""The engine: one `step()` schedules a batch, runs the model once, samples, reports each request's progress.

It is synchronous and knows nothing of HTTP; `async_engine` runs it on a thread for the server, and tests and
benchmarks drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from moe_core.serve.block_manager import BlockManager
from moe_core.serve.model_runner import ModelRunner
from moe_core.serve.paged_cache import PagedLatentCache
from moe_core.serve.sampling import make_generator, sample
from moe_core.serve.scheduler import Scheduler
from moe_core.serve.sequence import FinishReason, SamplingParams, Sequence


@dataclass
class EngineConfig:
    max_num_seqs: int = 16  # the running batch's limit
    max_num_batched_tokens: int = 4096  # prompt tokens one prefill step may take
    max_model_len: int | None = None  # default: the model's max_seq_len
    block_size: int = 16
    num_blocks: int | None = None  # default: enough for max_num_seqs full-length sequences
    use_cuda_graphs: bool = True
    compile_layers: bool = False
    fast_decode: bool = True  # the model's serving paths (fewer kernels); False = the reference paths
    cache_dtype: torch.dtype | None = None  # default: the model's dtype


@dataclass
class StepOutput:
    seq: Sequence
    new_token: int
    finished: bool


@dataclass
class EngineStats:
    steps: int = 0
    prefill_steps: int = 0
    decode_steps: int = 0
    prompt_tokens_computed: int = 0
    generated_tokens: int = 0
    decode_batch_sizes: list[int] = field(default_factory=list)


class LLMEngine:
    def __init__(
        self, model: torch.nn.Module, config: EngineConfig | None = None, eos_token_ids: tuple[int, ...] = ()
    ):
        self.config = cfg = config or EngineConfig()
        self.model = model.eval()
        mcfg = model.config
        self.max_model_len = min(cfg.max_model_len or mcfg.max_seq_len, mcfg.max_seq_len)
        param = next(model.parameters())
        num_blocks = cfg.num_blocks or cfg.max_num_seqs * -(-self.max_model_len // cfg.block_size)
        self.cache = PagedLatentCache(
            mcfg, num_blocks, cfg.block_size, cfg.cache_dtype or param.dtype, param.device
        )
        self.block_manager = BlockManager(num_blocks, cfg.block_size)
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            eos_token_ids=eos_token_ids,
        )
        self.runner = ModelRunner(
            model,
            self.cache,
            use_cuda_graphs=cfg.use_cuda_graphs,
            compile_layers=cfg.compile_layers,
            fast_decode=cfg.fast_decode,
        )
        self.device = param.device
        self.stats = EngineStats()

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams | None = None) -> Sequence:
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} outside the vocabulary [0, {vocab})")
        seq = Sequence(list(prompt_token_ids), params or SamplingParams())
        if seq.params.seed is not None:
            seq.generator = make_generator(seq.params.seed, self.device)
        self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        self.scheduler.finish(seq, FinishReason.ABORT)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[StepOutput]:
        seqs, is_prefill = self.scheduler.schedule()
        if not seqs:
            return []
        logits = self.runner.run(seqs, is_prefill)
        tokens = sample(logits, seqs)
        s = self.stats
        s.steps += 1
        if is_prefill:
            s.prefill_steps += 1
            s.prompt_tokens_computed += sum(len(q) - q.num_computed_tokens for q in seqs)
        else:
            s.decode_steps += 1
            s.decode_batch_sizes.append(len(seqs))
        s.generated_tokens += len(seqs)
        finished = set(map(id, self.scheduler.postprocess(seqs, tokens)))
        return [StepOutput(q, t, id(q) in finished) for q, t in zip(seqs, tokens, strict=True)]

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """Run prompts to completion (tests, benchmarks); returns each one's output ids in order."""
        seqs = [self.add_request(p, params) for p in prompts]
        while self.has_work():
            self.step()
        return [q.output_token_ids for q in seqs]
