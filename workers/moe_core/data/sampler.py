"""Deterministic, resumable sampling of packed training windows; its position is saved in every checkpoint.

The stream is cut into non-overlapping windows of ``seq_len + 1`` tokens (inputs and shifted targets).
Each epoch visits every window once in an order fixed by ``(seed, epoch)``. The global batch is the same
whatever the world size; each rank takes its contiguous slice, so 1 and N processes see the same data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from moe_core.data.shards import TokenStream


class SamplerError(ValueError):
    """A sampler that cannot serve the asked batch, or a saved position that does not fit this data."""


@dataclass
class SamplerState:
    seed: int
    seq_len: int
    n_windows: int
    epoch: int = 0
    cursor: int = 0  # windows of the current epoch already served
    served: int = 0  # global batches served since the start of the run


class PackedSampler:
    def __init__(self, stream: TokenStream, seq_len: int, seed: int):
        n_windows = (len(stream) - 1) // seq_len
        if n_windows < 1:
            raise SamplerError(
                f"the corpus has {len(stream)} tokens: too few for one window of {seq_len + 1}"
            )
        self.stream = stream
        self.state = SamplerState(seed=seed, seq_len=seq_len, n_windows=n_windows)
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.state.seed, epoch])
            self._order = rng.permutation(self.state.n_windows)
            self._order_epoch = epoch
        return self._order

    def next_global_indices(self, global_batch: int) -> np.ndarray:
        """Window indices of the next global batch; advances the position."""
        s = self.state
        out = []
        while len(out) < global_batch:
            order = self._epoch_order(s.epoch)
            take = min(global_batch - len(out), s.n_windows - s.cursor)
            out.extend(order[s.cursor : s.cursor + take].tolist())
            s.cursor += take
            if s.cursor == s.n_windows:
                s.epoch, s.cursor = s.epoch + 1, 0
        s.served += 1
        return np.asarray(out, dtype=np.int64)

    def next_batch(
        self, global_batch: int, rank: int = 0, world_size: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of this rank's slice of the next global batch, each [local_batch, seq_len]."""
        if global_batch % world_size:
            raise SamplerError(f"batch size {global_batch} does not split evenly over {world_size} processes")
        per_rank = global_batch // world_size
        idx = self.next_global_indices(global_batch)[rank * per_rank : (rank + 1) * per_rank]
        L = self.state.seq_len
        windows = np.stack([self.stream.window(int(i) * L, L + 1) for i in idx])
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, saved: dict) -> None:
        s = self.state
        for key in ("seed", "seq_len", "n_windows"):
            if saved.get(key) != getattr(s, key):
                raise SamplerError(
                    f"the checkpoint's sampler has {key}={saved.get(key)}, this run has {getattr(s, key)}: "
                    "resume with the same data, seq_len and seed"
                )
        self.state = SamplerState(**saved)
