"""The response cache on a real Redis: identical deterministic requests are answered from it, bit for bit, with
`x-cache: hit`; anything else reaches the worker; a Redis that does not answer only costs the cache. The worker
is the StubWorker stand-in, which counts what reaches it (test_api_worker.py repeats the hit on the real one)."""

from __future__ import annotations

import pytest

from moe_control import response_cache
from tests.api.conftest import make_live
from tests.conftest import free_port

pytestmark = pytest.mark.redis


@pytest.fixture
def cached(live_stub, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    return live_stub


GREEDY = {"prompt": "def add(a, b):", "max_tokens": 4, "temperature": 0}


def test_an_identical_greedy_request_is_a_bit_identical_hit(http, cached):
    first = http.post("/v1/completions", json=GREEDY)
    second = http.post("/v1/completions", json=GREEDY)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["x-prefix-hash"] == first.headers["x-prefix-hash"]
    assert len(cached.requests) == 1


def test_a_seeded_sampled_request_is_cached_and_an_unseeded_one_is_not(http, cached):
    seeded = {"prompt": "hello", "temperature": 0.8, "seed": 7}
    assert http.post("/v1/completions", json=seeded).headers["x-cache"] == "miss"
    assert http.post("/v1/completions", json=seeded).headers["x-cache"] == "hit"
    sampled = {"prompt": "hello", "temperature": 0.8}
    a, b = http.post("/v1/completions", json=sampled), http.post("/v1/completions", json=sampled)
    assert (a.headers["x-cache"], b.headers["x-cache"]) == ("bypass", "bypass")
    assert a.json()["choices"][0]["text"] != b.json()["choices"][0]["text"]
    assert len(cached.requests) == 3


def test_any_difference_in_the_request_is_a_different_entry(http, cached):
    http.post("/v1/completions", json=GREEDY)
    for changed in ({"max_tokens": 5}, {"stop": "x"}, {"stream": True}, {"prompt": "def add(a, c):"}):
        r = http.post("/v1/completions", json={**GREEDY, **changed})
        assert r.headers["x-cache"] == "miss", changed
    chat = {"messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 4, "temperature": 0}
    assert http.post("/v1/chat/completions", json=chat).headers["x-cache"] == "miss"
    assert http.post("/v1/chat/completions", json=chat).headers["x-cache"] == "hit"
    assert len(cached.requests) == 6


def test_a_text_prompt_and_its_token_ids_share_one_entry(http, cached):
    first = http.post("/v1/completions", json=GREEDY)
    ids = cached.requests[0]["body"]["prompt"]
    second = http.post("/v1/completions", json={**GREEDY, "prompt": ids})
    assert second.headers["x-cache"] == "hit" and second.content == first.content


def test_a_new_deployment_does_not_serve_the_old_models_answers(http, cached, control_plane, tokenizer_json):
    http.post("/v1/completions", json=GREEDY)
    s3 = control_plane.client("s3")
    s3.put_object(
        Bucket=control_plane.model_bucket, Key="v2/tokenizer.json", Body=tokenizer_json.read_bytes()
    )
    make_live(control_plane, f"s3://{control_plane.model_bucket}/v2/", cached.url, endpoint_id="moe-v2")
    assert http.post("/v1/completions", json=GREEDY).headers["x-cache"] == "miss"


def test_the_entry_expires_after_the_ttl(http, cached, monkeypatch, redis_url):
    import redis

    monkeypatch.setenv("RESPONSE_CACHE_TTL", "60")
    http.post("/v1/completions", json={**GREEDY, "max_tokens": 3})
    keys = redis.Redis.from_url(redis_url).keys(response_cache.KEY_PREFIX + "*")
    ttls = [redis.Redis.from_url(redis_url).ttl(k) for k in keys]
    assert any(0 < t <= 60 for t in ttls)


def test_an_unreachable_redis_serves_without_the_cache_and_warns(http, live_stub, monkeypatch, caplog):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    first = http.post("/v1/completions", json=GREEDY)
    second = http.post("/v1/completions", json=GREEDY)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == second.headers["x-cache"] == "unavailable"
    assert len(live_stub.requests) == 2
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and "response cache unavailable" in r.message
    ]
    assert len(warnings) == 1  # then Redis is left alone for a while, not asked (and waited for) per request


def test_a_redis_failure_is_a_miss_not_an_error():
    cache = response_cache.ResponseCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=10)
    assert cache.get("k") is None and cache.available is False
    assert cache.put("k", response_cache.CachedResponse("application/json", b"{}")) is False
