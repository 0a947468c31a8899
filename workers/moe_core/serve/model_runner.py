"""Runs the model for one engine step: builds the batch from sequences, sets the paged cache's slots, returns
the logits of each sequence's last position. On CUDA, decode steps replay CUDA graphs captured per
(batch bucket, context bucket), so a step costs one launch instead of one per kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moe_core.serve.paged_cache import PagedLatentCache, step_slots
from moe_core.serve.sequence import Sequence

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= n), None)


class _DecodeGraph:
    def __init__(self, batch: int, context: int, device: torch.device):
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.start = torch.zeros(batch, dtype=torch.long, device=device)
        self.write = torch.zeros(batch, dtype=torch.long, device=device)
        self.read = torch.zeros(batch, context, dtype=torch.long, device=device)
        self.mask = torch.zeros(batch, 1, 1, context, dtype=torch.bool, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self.logits: Tensor | None = None


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        cache: PagedLatentCache,
        *,
        use_cuda_graphs: bool = True,
        context_bucket: int = 256,
        compile_layers: bool = False,
        fast_decode: bool = True,
    ):
        self.model = model
        self.cache = cache
        self.device = next(model.parameters()).device
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda"
        self.context_bucket = context_bucket
        self.graphs: dict[tuple[int, int], _DecodeGraph] = {}
        self.graph_pool = None
        # Serving needs no load statistics; the router's counter update is a wasted kernel per layer.
        for module in model.modules():
            if hasattr(module, "track_load"):
                module.track_load = False
            # The model's serving paths (model.py, `fast_decode`): same arithmetic, fewer kernels, no per-step
            # copies of weights. False keeps the reference paths (benchmarks compare both).
            if hasattr(module, "fast_decode"):
                module.fast_decode = fast_decode
        self.layers = list(model.layers)
        if compile_layers:
            self.layers = [torch.compile(layer, fullgraph=False, dynamic=False) for layer in self.layers]

    # ---- the forward pass -------------------------------------------------------------------------------
    def _forward(self, tokens: Tensor, start: Tensor, last_index: Tensor | None = None) -> Tensor:
        """The model's trunk with our (possibly compiled) layers; logits at last_index [B] (or position 0)."""
        m = self.model
        cos, sin = m.rope(start, tokens.shape[1])
        h = m.embed(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, start, self.cache)
        if last_index is None:
            h = h[:, -1]
        else:
            h = h[torch.arange(h.shape[0], device=h.device), last_index]
        return m.head(m.norm(h))

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool) -> Tensor:
        """logits [len(seqs), vocab] for the next token of each sequence."""
        if is_prefill:
            return self._prefill(seqs)
        return self._decode(seqs)

    def _prefill(self, seqs: list[Sequence]) -> Tensor:
        starts = [s.num_computed_tokens for s in seqs]
        chunks = [s.token_ids[s.num_computed_tokens :] for s in seqs]
        lens = [len(c) for c in chunks]
        t_max = max(lens)
        tokens = torch.zeros(len(seqs), t_max, dtype=torch.long)
        for b, c in enumerate(chunks):
            tokens[b, : len(c)] = torch.tensor(c, dtype=torch.long)
        context = max(st + n for st, n in zip(starts, lens, strict=True))
        write, read, mask = step_slots(
            [s.block_table for s in seqs],
            starts,
            lens,
            self.cache.block_size,
            self.cache.scratch_slot,
            t_max,
            context,
        )
        dev = self.device
        self.cache.set_step(write.to(dev), read.to(dev), mask.to(dev))
        last = torch.tensor([n - 1 for n in lens], device=dev)
        return self._forward(tokens.to(dev), torch.tensor(starts, device=dev), last)

    def _decode_inputs(self, seqs: list[Sequence], rows: int, context: int):
        starts = [len(s) - 1 for s in seqs]
        tokens = torch.zeros(rows, 1, dtype=torch.long)
        tokens[: len(seqs), 0] = torch.tensor([s.token_ids[-1] for s in seqs], dtype=torch.long)
        start = torch.zeros(rows, dtype=torch.long)
        start[: len(seqs)] = torch.tensor(starts, dtype=torch.long)
        write, read, mask = step_slots(
            [s.block_table for s in seqs],
            starts,
            [1] * len(seqs),
            self.cache.block_size,
            self.cache.scratch_slot,
            1,
            context,
            num_rows=rows,
        )
        return tokens, start, write, read, mask

    def _decode(self, seqs: list[Sequence]) -> Tensor:
        context = max(len(s) for s in seqs)
        rows = _bucket(len(seqs), BATCH_BUCKETS) if self.use_cuda_graphs else None
        if rows is None:
            tokens, start, write, read, mask = self._decode_inputs(seqs, len(seqs), context)
            dev = self.device
            self.cache.set_step(write.to(dev), read.to(dev), mask.to(dev))
            return self._forward(tokens.to(dev), start.to(dev))
        context = -(-context // self.context_bucket) * self.context_bucket
        g = self.graphs.get((rows, context))
        if g is None:
            g = self._capture(rows, context)
        static = (g.tokens, g.start, g.write, g.read, g.mask)
        for dst, src in zip(static, self._decode_inputs(seqs, rows, context), strict=True):
            dst.copy_(src, non_blocking=True)
        g.graph.replay()
        return g.logits[: len(seqs)]

    def _capture(self, rows: int, context: int) -> _DecodeGraph:
        g = _DecodeGraph(rows, context, self.device)
        g.mask[..., 0] = True  # a valid (if meaningless) step for the warm-up runs: every row sees slot 0
        g.read.fill_(self.cache.scratch_slot)
        g.write.fill_(self.cache.scratch_slot)
        self.cache.set_step(g.write, g.read, g.mask)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(g.tokens, g.start)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(g.graph, pool=self.graph_pool):
            g.logits = self._forward(g.tokens, g.start)
        self.graph_pool = g.graph.pool()
        self.graphs[(rows, context)] = g
        return g
