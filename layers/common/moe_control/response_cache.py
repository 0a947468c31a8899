"""Answers to identical deterministic completion requests, kept in Redis (the ElastiCache tier in AWS).

Only a request whose answer cannot change is cached: greedy (temperature 0) or sampled from a given seed, on
the same model artifact. The key is sha256 of (artifact URI, route, the request as the worker gets it, token
ids included), so a new deployment, a different chat rendering or any sampling field is a different key. A hit
gives back the stored bytes unchanged. The cache is an optimisation: when Redis does not answer, requests are
served without it (one warning, then Redis is left alone for a while rather than slowing every request).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from moe_control.observability import logger
from moe_control.settings import env_int

KEY_PREFIX = "moe:response:"
RETRY_AFTER_S = 30.0  # after a failure, Redis is not asked again for this long
SOCKET_TIMEOUT_S = 0.25  # a cache that answers slower than this is not worth waiting for


def cache_key(artifact_uri: str, route: str, worker_body: dict[str, Any]) -> str:
    canonical = json.dumps([artifact_uri, route, worker_body], sort_keys=True, separators=(",", ":"))
    return KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    content_type: str
    body: bytes


class ResponseCache:
    """get/put that never raise: a Redis failure is a miss (and a warning), not an error."""

    def __init__(self, url: str, ttl_s: int):
        import redis

        self.url, self.ttl_s = url, ttl_s
        self._redis = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._errors = (redis.RedisError, OSError)
        self._down_until = 0.0
        self.available = True  # False while Redis is being left alone after a failure

    def _usable(self) -> bool:
        self.available = time.monotonic() >= self._down_until
        return self.available

    def _failed(self, op: str, exc: Exception) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_S
        self.available = False
        logger.warning(
            f"response cache unavailable ({op}: {exc}); serving without it for {RETRY_AFTER_S:.0f} s",
            extra={"redis_url": self.url, "operation": op},
        )

    def get(self, key: str) -> CachedResponse | None:
        if not self._usable():
            return None
        try:
            raw = self._redis.get(key)
        except self._errors as exc:
            self._failed("GET", exc)
            return None
        if raw is None:
            return None
        content_type, sep, body = raw.partition(b"\n")
        if not sep:
            return None  # not written by put(): ignore rather than serve it
        return CachedResponse(content_type.decode(), body)

    def put(self, key: str, response: CachedResponse) -> bool:
        if not self._usable():
            return False
        try:
            self._redis.set(key, response.content_type.encode() + b"\n" + response.body, ex=self.ttl_s)
            return True
        except self._errors as exc:
            self._failed("SET", exc)
            return False


_CACHES: dict[tuple[str, int], ResponseCache] = {}
_LOCK = threading.Lock()


def from_env() -> ResponseCache | None:
    """The cache REDIS_URL names (one per process, so connections are reused), or None when it is empty."""
    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        return None
    ttl = env_int("RESPONSE_CACHE_TTL", 3600)
    with _LOCK:
        cache = _CACHES.get((url, ttl))
        if cache is None:
            cache = _CACHES[(url, ttl)] = ResponseCache(url, ttl)
        return cache
