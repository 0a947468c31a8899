"""The OpenAI-compatible routes' preprocessing over HTTP through the local API Gateway: validation, limits, the
live endpoint, tokenization with the deployed model's tokenizer, the prefix hash, and the mapping of worker
errors. The worker here is StubWorker (tests/api/conftest.py), a stand-in used only to make it misbehave on
purpose and to see what reaches it; test_api_worker.py runs the real one."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from moe_control import preprocess
from tests.api.conftest import make_live


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert "Traceback" not in r.text
    return err


def _ids(tokenizer_json, text: str) -> list[int]:
    return Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "route, body, field",
    [
        ("/v1/completions", {"max_tokens": 4}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": [1, -2]}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "temperature": 2.5}, "temperature"),
        ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
        ("/v1/completions", {"prompt": "hi", "n": 2}, "n"),
        ("/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"prompt": "hi", "seed": -1}, "seed"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"prompt": "hi"}, "messages"),
    ],
)
def test_invalid_completion_requests_are_400_naming_the_field(http, control_plane, route, body, field):
    err = _error(http.post(route, json=body), 400, "invalid_request")
    assert err["type"] == "invalid_request_error" and err["message"].startswith(field + ":"), err


def test_a_body_that_is_not_json_is_400(http, control_plane):
    r = http.post("/v1/completions", content=b'{"prompt": "hi"', headers={"Content-Type": "application/json"})
    assert "not valid JSON" in _error(r, 400, "invalid_request")["message"]
    r = http.post("/v1/completions", content=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert "not UTF-8" in _error(r, 400, "invalid_request")["message"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data", "application/x-www-form-urlencoded"]
)
def test_a_body_that_says_it_is_not_json_is_415(http, control_plane, content_type):
    r = http.post("/v1/completions", content=b'{"prompt": "hi"}', headers={"Content-Type": content_type})
    assert content_type in _error(r, 415, "unsupported_media_type")["message"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": [1, False]}, "prompt.1"),
        ({"prompt": "hi", "max_tokens": "8"}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "hi", "ignore_eos": 0}, "ignore_eos"),
        ({"prompt": "hi", "seed": 2**53}, "seed"),
        ({"prompt": "hi", "stop": [""]}, "stop"),
    ],
)
def test_json_types_are_taken_as_written(http, control_plane, body, field):
    err = _error(http.post("/v1/completions", json=body), 400, "invalid_request")
    assert field in err["message"], err


def test_integral_numbers_written_as_floats_are_integers(http, live_stub):
    r = http.post("/v1/completions", json={"prompt": [1.0, 2], "max_tokens": 4.0, "n": 1.0, "seed": 3.0})
    assert r.status_code == 200, r.text
    sent = live_stub.requests[0]["body"]
    assert (sent["prompt"], sent["max_tokens"], sent["seed"]) == ([1, 2], 4, 3)


# ------------------------------------------------------------------------------------------- the live endpoint
def test_without_a_live_endpoint_completions_are_503_and_no_model_is_listed(http, control_plane):
    err = _error(http.post("/v1/completions", json={"prompt": "hi"}), 503, "no_live_endpoint")
    assert err["type"] == "server_error" and "approve" in err["message"]
    assert http.get("/v1/models").json() == {"object": "list", "data": []}


def test_the_live_model_is_listed_and_another_model_name_is_404(http, live_stub, tokenizer_only_artifact):
    models = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["moe-v1"] and models[0]["artifact_uri"] == tokenizer_only_artifact
    _error(http.post("/v1/completions", json={"prompt": "hi", "model": "gpt-4"}), 404, "model_not_found")
    assert http.post("/v1/completions", json={"prompt": "hi", "model": "moe-v1"}).status_code == 200
    assert len(live_stub.requests) == 1


# ------------------------------------------------------------------------------------------- limits
def test_max_tokens_over_the_limit_is_400_and_never_reaches_the_worker(http, live_stub, monkeypatch):
    err = _error(
        http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 513}), 400, "max_tokens_too_large"
    )
    assert "513" in err["message"] and "512" in err["message"]
    monkeypatch.setenv("MAX_OUTPUT_TOKENS", "8")
    _error(http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 9}), 400, "max_tokens_too_large")
    assert http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 8}).status_code == 200
    assert len(live_stub.requests) == 1


def test_a_prompt_over_the_limit_is_400_counting_its_tokens(http, live_stub, monkeypatch, tokenizer_json):
    monkeypatch.setenv("MAX_PROMPT_TOKENS", "5")
    text = "The quick brown fox jumps over the lazy dog."
    n = len(_ids(tokenizer_json, text))
    assert n > 5
    err = _error(http.post("/v1/completions", json={"prompt": text}), 400, "prompt_too_long")
    assert f"{n} tokens" in err["message"] and "limit is 5" in err["message"]
    chat = {"messages": [{"role": "user", "content": text}]}
    _error(http.post("/v1/chat/completions", json=chat), 400, "prompt_too_long")
    _error(http.post("/v1/completions", json={"prompt": list(range(6))}), 400, "prompt_too_long")
    assert live_stub.requests == []


def test_token_ids_outside_the_vocabulary_are_400(http, live_stub, tokenizer_json):
    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    err = _error(http.post("/v1/completions", json={"prompt": [1, 2, vocab]}), 400, "invalid_token_ids")
    assert f"[{vocab}]" in err["message"] and f"[0, {vocab})" in err["message"]
    assert http.post("/v1/completions", json={"prompt": [1, 2, vocab - 1]}).status_code == 200
    assert len(live_stub.requests) == 1


def test_a_deployment_without_a_tokenizer_is_a_500_that_says_so(http, control_plane, stub_worker):
    make_live(control_plane, f"s3://{control_plane.model_bucket}/no-such-model/", stub_worker.url)
    err = _error(http.post("/v1/completions", json={"prompt": "hi"}), 500, "tokenizer_missing")
    assert "tokenizer.json" in err["message"] and stub_worker.requests == []


# ------------------------------------------------------------------------------------------- what the worker gets
def test_the_worker_gets_token_ids_and_the_answer_carries_the_prefix_hash(http, live_stub, tokenizer_json):
    text = "def add(a, b):\n    return a + b\n" * 3
    r = http.post("/v1/completions", json={"prompt": text, "max_tokens": 4, "temperature": 0, "stop": "\n"})
    assert r.status_code == 200, r.text
    sent = live_stub.requests[0]
    ids = _ids(tokenizer_json, text)
    assert sent["path"] == "/v1/completions"
    assert sent["body"] == {
        "prompt": ids,
        "max_tokens": 4,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["\n"],
        "seed": None,
        "stream": False,
        "ignore_eos": False,
    }
    assert r.headers["x-prefix-hash"] == preprocess.prefix_hash(ids, preprocess.Limits.from_env())
    assert r.headers["x-cache"] == "off"
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "moe-v1"
    assert body["choices"][0]["text"] == "answer 1"


def test_chat_is_rendered_with_the_chat_template_and_answered_as_chat(http, live_stub, tokenizer_json):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, world!"}]
    r = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 3})
    assert r.status_code == 200, r.text
    prompt = "<|bos|><|system|>Be brief.<|eos|><|user|>Hello, world!<|eos|><|assistant|>"
    assert live_stub.requests[0]["body"]["prompt"] == _ids(tokenizer_json, prompt)
    body = r.json()
    assert (
        body["object"] == "chat.completion"
        and body["id"].startswith("chatcmpl-")
        and body["model"] == "moe-v1"
    )
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "answer 1"}, "finish_reason": "length"}
    ]


def test_a_stream_is_answered_as_the_whole_sse_transcript(http, live_stub):
    r = http.post("/v1/completions", json={"prompt": "hi", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "answer 1"
    assert {c["model"] for c in chunks} == {"moe-v1"} and chunks[-1]["choices"][0][
        "finish_reason"
    ] == "length"

    r = http.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    events = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "answer 2"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert chunks[-1]["usage"]["completion_tokens"] == 2


# ------------------------------------------------------------------------------------------- worker errors
def test_a_busy_worker_is_429_with_its_message(http, live_stub):
    live_stub.status = 429
    live_stub.error = {
        "message": "server busy: 8 in flight",
        "type": "rate_limit_error",
        "code": "queue_full",
    }
    err = _error(http.post("/v1/completions", json={"prompt": "hi"}), 429, "queue_full")
    assert err["type"] == "rate_limit_error" and err["message"] == "server busy: 8 in flight"


def test_a_worker_4xx_keeps_its_status_and_message(http, live_stub):
    live_stub.status = 400
    live_stub.error = {
        "message": "prompt (5) + max_tokens (9) exceeds the context of 8",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
    }
    err = _error(http.post("/v1/completions", json={"prompt": "hi"}), 400, "context_length_exceeded")
    assert err["message"] == live_stub.error["message"]


def test_a_worker_5xx_is_502_naming_the_worker(http, live_stub):
    live_stub.status = 500
    live_stub.error = {"message": "engine thread died", "type": "server_error", "code": None}
    err = _error(http.post("/v1/completions", json={"prompt": "hi"}), 502, "worker_error")
    assert (
        live_stub.url in err["message"]
        and "HTTP 500" in err["message"]
        and "engine thread died" in err["message"]
    )


def test_a_worker_that_does_not_answer_in_time_is_502(http, live_stub, monkeypatch):
    monkeypatch.setenv("WORKER_TIMEOUT_S", "0.3")
    live_stub.delay_s = 2.0
    err = _error(http.post("/v1/completions", json={"prompt": "hi"}), 502, "worker_timeout")
    assert "did not answer within" in err["message"]


def test_an_unreachable_worker_is_502(http, control_plane, tokenizer_only_artifact):
    from tests.conftest import free_port

    make_live(control_plane, tokenizer_only_artifact, f"http://127.0.0.1:{free_port()}")
    err = _error(http.post("/v1/completions", json={"prompt": "hi"}), 502, "worker_unreachable")
    assert "cannot reach" in err["message"]


def test_a_stream_cut_before_done_is_502(http, live_stub):
    live_stub.mode = "cut_stream"
    _error(http.post("/v1/completions", json={"prompt": "hi", "stream": True}), 502, "worker_stream_cut")


def test_a_sagemaker_endpoint_is_invoked_by_name_when_the_deployment_has_no_url(
    http, control_plane, tokenizer_only_artifact
):
    # In AWS the live endpoint is a SageMaker endpoint (no URL): the API calls InvokeEndpoint. moto answers
    # InvokeEndpoint from a queue of configured results; here, a completion in the worker's shape.
    import httpx

    completion = {
        "id": "cmpl-sm1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "container",
        "choices": [{"index": 0, "text": "from sagemaker", "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    results = {"results": [{"Body": json.dumps(completion), "ContentType": "application/json"}]}
    httpx.post(
        f"{control_plane.endpoint}/moto-api/static/sagemaker/endpoint-results", json=results
    ).raise_for_status()
    make_live(control_plane, tokenizer_only_artifact, None, endpoint_id="moe-sm")
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "sagemaker?"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "moe-sm" and body["choices"][0]["message"]["content"] == "from sagemaker"
