"""The server over real HTTP: `moectl serve` in its own process, talked to with httpx - completions, chat,
SSE streaming, validation errors, 429 when the queue is full, /health, /metrics, /v1/models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _start(model: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "moectl.cli", "serve", "--model", str(model), "--port", str(port), *extra]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not become healthy within 60 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tiny_artifact):
    proc, url = _start(tiny_artifact, "--max-batch", "4", "--max-queue", "4", "--max-output-tokens", "64")
    yield url
    _stop(proc)


def _sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_completion_returns_text_and_usage_counts(server):
    r = httpx.post(
        f"{server}/v1/completions",
        json={"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0, "ignore_eos": True},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["choices"][0]["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8


def test_prompt_as_token_ids_and_greedy_is_deterministic(server):
    req = {"prompt": [5, 6, 7, 8, 9], "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    a = httpx.post(f"{server}/v1/completions", json=req, timeout=30).json()
    b = httpx.post(f"{server}/v1/completions", json=req, timeout=30).json()
    assert a["usage"]["prompt_tokens"] == 5
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_streaming_sends_sse_chunks_ending_with_done_that_add_up_to_the_full_text(server):
    req = {"prompt": "import os", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    full = httpx.post(f"{server}/v1/completions", json=req, timeout=30).json()["choices"][0]["text"]
    with httpx.stream("POST", f"{server}/v1/completions", json={**req, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == full
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_chat_completion_streams_role_then_content(server):
    req = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=req, timeout=30) as r:
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    r = httpx.post(f"{server}/v1/chat/completions", json={**req, "stream": False}, timeout=30)
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_stop_string_ends_the_completion_before_it(server):
    req = {"prompt": [5, 6, 7], "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    text = httpx.post(f"{server}/v1/completions", json=req, timeout=30).json()["choices"][0]["text"]
    stop = text[3:5] if len(text) >= 5 else text[-1:]
    cut = httpx.post(f"{server}/v1/completions", json={**req, "stop": stop}, timeout=30).json()["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == text[: text.find(stop)]


@pytest.mark.parametrize(
    "body, code",
    [
        ({"prompt": "x", "max_tokens": 0}, "invalid_request"),
        ({"prompt": "x", "temperature": 3}, "invalid_request"),
        ({"prompt": "", "max_tokens": 2}, "invalid_request"),
        ({"max_tokens": 2}, "invalid_request"),
        ({"prompt": "x", "max_tokens": 65}, "max_tokens_too_large"),
        ({"prompt": [1, 2, 100000]}, "invalid_token_ids"),
        ({"prompt": "x", "n": 2}, "invalid_request"),
        ({"prompt": [5] * 500, "max_tokens": 20}, "context_length_exceeded"),
        ({"prompt": [5] * 600, "max_tokens": 1}, "prompt_too_long"),
    ],
)
def test_invalid_requests_get_400_with_a_clear_error(server, body, code):
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


def test_malformed_json_and_unknown_model_are_refused(server):
    r = httpx.post(f"{server}/v1/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{server}/v1/completions", json={"prompt": "x", "model": "gpt-9"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_models_health_and_metrics(server):
    models = httpx.get(f"{server}/v1/models", timeout=10).json()
    assert models["data"][0]["object"] == "model"
    assert httpx.get(f"{server}/health", timeout=10).json()["status"] == "ok"
    text = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'moe_requests_total{endpoint="completions",status="200"}' in text
    assert "moe_time_to_first_token_seconds_bucket" in text
    assert "moe_prefix_cache_queries_total" in text


def test_full_queue_gets_429(tiny_artifact):
    proc, url = _start(tiny_artifact, "--max-batch", "1", "--max-queue", "0")
    try:
        long = {"prompt": [5, 6, 7], "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=long, timeout=60) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # the long request is running
            busy = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)
            assert busy.status_code == 429
            assert busy.json()["error"]["type"] == "rate_limit_error"
        # once the first request is done (its stream closed and aborted), the server takes requests again
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health", timeout=5).json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.1)
        ok = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)
        assert ok.status_code == 200
    finally:
        _stop(proc)


def test_expert_budget_serves_with_tier_counters_on_metrics(tiny_artifact):
    proc, url = _start(tiny_artifact, "--expert-budget", "0.25", "--expert-policy", "lfu")
    try:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "class Stack:", "max_tokens": 4}, timeout=30)
        assert r.status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'moe_expert_tier_hits_total{tier="gpu"}' in text
        assert 'moe_expert_tier_misses_total{tier="gpu"}' in text
        assert "moe_expert_gpu_slots 4.0" in text
    finally:
        _stop(proc)
