"""The storage tiers below the GPU: host memory, Redis (ElastiCache) and S3, keyed by (layer, expert).

An expert's weights travel between tiers as one safetensors blob (its w1, w2, w3), so every tier returns the
exact bits it was given. Host memory is bounded and evicts by policy; Redis and S3 hold what they are given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from moe_core.experts.policies import LRU, EvictionPolicy

if TYPE_CHECKING:
    import torch

ExpertKey = tuple[int, int]  # (layer_id, expert_id)
ExpertWeights = dict[str, "torch.Tensor"]


class ExpertNotFound(KeyError):
    """No tier holds the expert: the store was built from a model that lacks it, or a tier lost it."""


def pack(weights: ExpertWeights) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in weights.items()})


def unpack(blob: bytes) -> ExpertWeights:
    from safetensors.torch import load

    return load(blob)


class Tier(Protocol):
    name: str

    def get(self, key: ExpertKey) -> ExpertWeights | None: ...

    def put(self, key: ExpertKey, weights: ExpertWeights) -> None: ...


class HostTier:
    """Host memory, bounded to `capacity` experts (None: unbounded); pinned when a GPU will read it."""

    name = "host"

    def __init__(self, capacity: int | None = None, policy: EvictionPolicy | None = None, pin: bool = False):
        self.capacity = capacity
        self.policy = policy or LRU()
        self.pin = pin
        self.items: dict[ExpertKey, ExpertWeights] = {}
        self.clock = 0

    def get(self, key: ExpertKey) -> ExpertWeights | None:
        self.clock += 1
        w = self.items.get(key)
        if w is not None:
            self.policy.access(key, self.clock)
        return w

    def put(self, key: ExpertKey, weights: ExpertWeights) -> None:
        if self.capacity == 0:
            return
        if key not in self.items and self.capacity is not None and len(self.items) >= self.capacity:
            victim = self.policy.victim(self.items.keys(), self.clock)
            del self.items[victim]
            self.policy.forget(victim)
        stored = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        if self.pin:
            stored = {k: v.pin_memory() for k, v in stored.items()}
        self.items[key] = stored
        self.policy.access(key, self.clock)


class RedisTier:
    """Redis (ElastiCache): one binary value per expert under `prefix`."""

    name = "redis"

    def __init__(self, url: str, prefix: str):
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def _key(self, key: ExpertKey) -> str:
        return f"{self.prefix}:L{key[0]}:E{key[1]}"

    def get(self, key: ExpertKey) -> ExpertWeights | None:
        blob = self.client.get(self._key(key))
        return None if blob is None else unpack(blob)

    def put(self, key: ExpertKey, weights: ExpertWeights) -> None:
        self.client.set(self._key(key), pack(weights))

    def put_many(self, items: Iterable[tuple[ExpertKey, ExpertWeights]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, weights in items:
            pipe.set(self._key(key), pack(weights))
        pipe.execute()

    def delete_all(self) -> int:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*"))
        return self.client.delete(*keys) if keys else 0


def s3_client():
    """The one place this package makes its S3 client; AWS_ENDPOINT_URL points it at the local cloud."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


class S3Tier:
    """S3, the cold tier: one object per expert under s3://bucket/prefix/."""

    name = "s3"

    def __init__(self, bucket: str, prefix: str, client=None):
        self.client = client or s3_client()
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: ExpertKey) -> str:
        return f"{self.prefix}/layer{key[0]}/expert{key[1]}.safetensors"

    def get(self, key: ExpertKey) -> ExpertWeights | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return unpack(obj["Body"].read())

    def put(self, key: ExpertKey, weights: ExpertWeights) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=pack(weights))
