"""Which resident expert to evict: LRU, LFU, decayed frequency (ours); Belady's optimum as a bound.

A policy sees every access to a (layer, expert) key, one clock tick per token, and picks a victim among the
resident keys of a tier that is full. Decayed frequency keeps, per expert, a count whose weight halves every
`half_life` ticks: it keeps experts that are popular now (LFU's strength) yet forgets the ones that were
popular long ago (LRU's), which is what routing does over a stream of different prompts.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Protocol

Key = Hashable


class EvictionPolicy(Protocol):
    name: str

    def access(self, key: Key, now: int) -> None: ...

    def victim(self, resident: Iterable[Key], now: int) -> Key: ...

    def forget(self, key: Key) -> None: ...


class LRU:
    name = "lru"

    def __init__(self) -> None:
        self.last: dict[Key, int] = {}

    def access(self, key: Key, now: int) -> None:
        self.last[key] = now

    def victim(self, resident: Iterable[Key], now: int) -> Key:
        return min(resident, key=lambda k: self.last.get(k, -1))

    def forget(self, key: Key) -> None:
        self.last.pop(key, None)


class LFU:
    """Counts over all time (kept across evictions, so a returning popular expert stays); ties by LRU."""

    name = "lfu"

    def __init__(self) -> None:
        self.count: dict[Key, int] = {}
        self.last: dict[Key, int] = {}

    def access(self, key: Key, now: int) -> None:
        self.count[key] = self.count.get(key, 0) + 1
        self.last[key] = now

    def victim(self, resident: Iterable[Key], now: int) -> Key:
        return min(resident, key=lambda k: (self.count.get(k, 0), self.last.get(k, -1)))

    def forget(self, key: Key) -> None:
        pass  # the count is the policy's memory of the key, kept across evictions


class DecayedFrequency:
    """Exponentially decayed access count (half-life in ticks); a prior from routing statistics seeds it."""

    name = "decayed"

    def __init__(self, half_life: float = 256.0, prior: dict[Key, float] | None = None):
        if half_life <= 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        self.rate = math.log(2) / half_life
        self.score: dict[Key, float] = dict(prior or {})
        self.stamp: dict[Key, int] = dict.fromkeys(self.score, 0)

    def _current(self, key: Key, now: int) -> float:
        s = self.score.get(key)
        if s is None:
            return 0.0
        return s * math.exp(-self.rate * (now - self.stamp[key]))

    def access(self, key: Key, now: int) -> None:
        self.score[key] = self._current(key, now) + 1.0
        self.stamp[key] = now

    def victim(self, resident: Iterable[Key], now: int) -> Key:
        # all scores decay by the same factor, so comparing log-scores at a common time needs no exp per key
        return min(
            resident,
            key=lambda k: math.log(self.score.get(k, 0.0) + 1e-300) + self.rate * self.stamp.get(k, 0),
        )

    def forget(self, key: Key) -> None:
        pass


class Belady:
    """The offline optimum (evict the key used furthest ahead): an upper bound that needs the whole trace."""

    name = "belady"

    def __init__(self, future_uses: dict[Key, list[int]]):
        # future_uses[key] = ascending ticks at which key is accessed; consumed as time passes
        self.future = {k: list(reversed(v)) for k, v in future_uses.items()}

    def access(self, key: Key, now: int) -> None:
        uses = self.future.get(key)
        while uses and uses[-1] <= now:
            uses.pop()

    def victim(self, resident: Iterable[Key], now: int) -> Key:
        return max(resident, key=lambda k: self.future[k][-1] if self.future.get(k) else math.inf)

    def forget(self, key: Key) -> None:
        pass


def make_policy(name: str, **kwargs) -> EvictionPolicy:
    policies = {"lru": LRU, "lfu": LFU, "decayed": DecayedFrequency}
    if name not in policies:
        raise ValueError(f"unknown expert eviction policy {name!r}; choose one of {sorted(policies)}")
    return policies[name](**kwargs)
