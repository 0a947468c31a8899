"""End to end with the real inference worker (`moectl serve` over a tiny artifact, its own process): what the
API answers equals what the worker answers when asked directly with the same tokens, for completions, chat and
streams, and a cached answer is the worker's answer, bit for bit."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.conftest import make_live, upload_folder

pytestmark = pytest.mark.slow


@pytest.fixture
def live_worker(control_plane, tiny_model_dir, worker_url):
    make_live(control_plane, upload_folder(control_plane, tiny_model_dir, "tiny"), worker_url)
    return worker_url


def _text(body: dict) -> str:
    choice = body["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


def _events(r: httpx.Response) -> list[str]:
    return [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]


def test_a_completion_through_the_api_is_the_workers_completion(http, live_worker):
    req = {"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    through_api = http.post("/v1/completions", json=req)
    assert through_api.status_code == 200, through_api.text
    direct = httpx.post(f"{live_worker}/v1/completions", json=req, timeout=30).json()
    body = through_api.json()
    assert _text(body) == _text(direct) and body["usage"]["completion_tokens"] == 8
    assert body["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
    assert body["model"] == "moe-v1" and body["object"] == "text_completion"


def test_a_chat_through_the_api_is_the_workers_own_chat(http, live_worker):
    messages = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Hello, world!"},
    ]
    req = {"messages": messages, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    through_api = http.post("/v1/chat/completions", json=req)
    assert through_api.status_code == 200, through_api.text
    direct = httpx.post(f"{live_worker}/v1/chat/completions", json=req, timeout=30).json()
    body = through_api.json()
    assert _text(body) == _text(direct)
    assert body["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
    assert set(body) == set(direct) and body["object"] == direct["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_a_chat_stream_has_the_shape_of_the_workers_chat_stream(http, live_worker):
    messages = [{"role": "user", "content": "def add(a, b):"}]
    req = {"messages": messages, "max_tokens": 6, "temperature": 0, "ignore_eos": True, "stream": True}
    through_api = http.post("/v1/chat/completions", json=req)
    direct = httpx.post(f"{live_worker}/v1/chat/completions", json=req, timeout=30)
    ours, theirs = _events(through_api), _events(direct)
    assert ours[-1] == theirs[-1] == "[DONE]"
    ours, theirs = [json.loads(e) for e in ours[:-1]], [json.loads(e) for e in theirs[:-1]]
    assert ours[0]["choices"][0]["delta"] == theirs[0]["choices"][0]["delta"] == {"role": "assistant"}

    def content(chunks):
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)

    assert content(ours) == content(theirs)
    assert ours[-1]["choices"][0]["finish_reason"] == theirs[-1]["choices"][0]["finish_reason"] == "length"
    assert ours[-1]["usage"]["completion_tokens"] == theirs[-1]["usage"]["completion_tokens"] == 6
    assert set(ours[0]) == set(theirs[0]) and set(ours[-1]) == set(theirs[-1])
    assert {c["object"] for c in ours} == {c["object"] for c in theirs} == {"chat.completion.chunk"}


def test_a_completion_stream_says_what_the_buffered_answer_says(http, live_worker):
    req = {"prompt": [5, 6, 7, 8, 9], "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    whole = http.post("/v1/completions", json=req).json()
    streamed = http.post("/v1/completions", json={**req, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed)
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == _text(whole)


@pytest.mark.redis
def test_a_cache_hit_is_the_workers_answer_bit_for_bit(http, live_worker, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    req = {"prompt": "import os\nimport sys\n", "max_tokens": 6, "seed": 11, "temperature": 0.9}
    first = http.post("/v1/completions", json=req)
    second = http.post("/v1/completions", json=req)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.content == first.content and first.status_code == second.status_code == 200
    # The worker's own answer to the same seeded request has the same text: the cache changed nothing.
    direct = httpx.post(f"{live_worker}/v1/completions", json=req, timeout=30).json()
    assert _text(first.json()) == _text(direct)


def test_the_workers_own_limit_errors_come_back_with_their_status(http, live_worker):
    # The worker was started with --max-output-tokens 64; the API's limit (512) lets 100 through.
    r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 100})
    assert r.status_code == 400 and r.json()["error"]["code"] == "max_tokens_too_large"
    assert "64" in r.json()["error"]["message"]
