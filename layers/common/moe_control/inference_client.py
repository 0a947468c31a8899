"""Forward a preprocessed request to an inference worker and give back its answer in the client's shape.

The worker always gets `/v1/completions` with token ids (the API tokenized, and rendered the chat template);
a chat request's answer is reshaped into `chat.completion` (or `chat.completion.chunk` events), exactly as the
worker's own chat route writes them. The answer is buffered: API Gateway REST and a buffered Lambda response
cannot stream, so `stream: true` returns the whole SSE transcript at once (see docs/api.md for true streaming).

Worker errors keep their meaning: 429 stays 429, other 4xx keep their status and message, 5xx and timeouts
become 502 with a message that names the worker.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from moe_control.api_models import ApiError
from moe_control.aws import client
from moe_control.deployments import Deployment
from moe_control.settings import env_float

SSE_DONE = b"data: [DONE]"


@dataclass(frozen=True)
class WorkerAnswer:
    content_type: str
    body: bytes


def _error_from_worker(status: int, raw: bytes, where: str) -> ApiError:
    try:
        err = json.loads(raw)["error"]
        message, code, type_ = str(err["message"]), err.get("code"), err.get("type")
    except (ValueError, KeyError, TypeError):
        message, code, type_ = raw.decode("utf-8", "replace")[:500] or "(empty body)", None, None
    if status == 429:
        return ApiError(429, message, code or "worker_busy", "rate_limit_error")
    if 400 <= status < 500:
        return ApiError(status, message, code or "invalid_request", type_)
    return ApiError(502, f"the inference worker {where} failed (HTTP {status}): {message}", "worker_error")


def _post_http(url: str, body: dict[str, Any], timeout_s: float) -> WorkerAnswer:
    request = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return WorkerAnswer(r.headers.get("Content-Type", "application/json"), r.read())
    except urllib.error.HTTPError as exc:
        raise _error_from_worker(exc.code, exc.read(), url) from None
    except TimeoutError:
        raise ApiError(
            502, f"the inference worker {url} did not answer within {timeout_s:.0f} s", "worker_timeout"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise ApiError(
                502, f"the inference worker {url} did not answer within {timeout_s:.0f} s", "worker_timeout"
            ) from None
        raise ApiError(
            502, f"cannot reach the inference worker {url}: {reason}", "worker_unreachable"
        ) from None


def _invoke_sagemaker(endpoint_name: str, body: dict[str, Any]) -> WorkerAnswer:
    """A SageMaker endpoint: the container's /invocations is the worker's /v1/completions."""
    runtime = client("sagemaker-runtime")
    try:
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint_name,
            ContentType="application/json",
            Accept="text/event-stream" if body.get("stream") else "application/json",
            Body=json.dumps(body).encode(),
        )
    except runtime.exceptions.ModelError as exc:
        status = int(exc.response.get("OriginalStatusCode") or 500)
        raw = (exc.response.get("OriginalMessage") or "").encode()
        raise _error_from_worker(status, raw, endpoint_name) from None
    except runtime.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        if err.get("Code") in ("ThrottlingException", "ModelNotReadyException"):
            raise ApiError(429, f"endpoint {endpoint_name}: {err.get('Message')}", "worker_busy") from None
        raise ApiError(
            502, f"endpoint {endpoint_name}: {err.get('Code')}: {err.get('Message')}", "worker_error"
        ) from None
    return WorkerAnswer(answer.get("ContentType", "application/json"), answer["Body"].read())


def call_worker(deployment: Deployment, url: str | None, body: dict[str, Any]) -> WorkerAnswer:
    """POST the request to `url` (an HTTP worker) or invoke the deployment's SageMaker endpoint."""
    if url:
        return _post_http(url, body, env_float("WORKER_TIMEOUT_S", 25.0))
    return _invoke_sagemaker(deployment.endpoint_id, body)


# ------------------------------------------------------------------------------------------- shaping the answer
def _chat_id(completion_id: str) -> str:
    return "chatcmpl-" + completion_id.removeprefix("cmpl-")


def _chat_body(c: dict[str, Any]) -> dict[str, Any]:
    choice = c["choices"][0]
    return {
        "id": _chat_id(c["id"]),
        "object": "chat.completion",
        "created": c["created"],
        "model": c["model"],
        "choices": [
            {
                "index": choice["index"],
                "message": {"role": "assistant", "content": choice["text"]},
                "finish_reason": choice["finish_reason"],
            }
        ],
        "usage": c["usage"],
    }


def _chat_chunk(c: dict[str, Any], delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    out = {
        "id": _chat_id(c["id"]),
        "object": "chat.completion.chunk",
        "created": c["created"],
        "model": c["model"],
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if "usage" in c:
        out["usage"] = c["usage"]
    return out


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def shape(answer: WorkerAnswer, model: str, chat: bool, stream: bool) -> WorkerAnswer:
    """The worker's completion (or its SSE transcript) as the client asked for it, named after `model`."""
    try:
        if not stream:
            body = json.loads(answer.body)
            body["model"] = model
            return WorkerAnswer("application/json", json.dumps(_chat_body(body) if chat else body).encode())
        events = [line[6:] for line in answer.body.split(b"\n") if line.startswith(b"data: ")]
        if not events or events[-1] != b"[DONE]":
            raise ApiError(
                502, "the inference worker's stream ended before data: [DONE]", "worker_stream_cut"
            )
        out = []
        for i, raw in enumerate(events[:-1]):
            c = json.loads(raw)
            c["model"] = model
            if not chat:
                out.append(_sse(c))
                continue
            if i == 0:
                out.append(
                    _sse(
                        _chat_chunk({k: v for k, v in c.items() if k != "usage"}, {"role": "assistant"}, None)
                    )
                )
            choice = c["choices"][0]
            delta = {"content": choice["text"]} if choice["text"] else {}
            if delta or choice["finish_reason"] is not None:
                out.append(_sse(_chat_chunk(c, delta, choice["finish_reason"])))
        out.append(SSE_DONE + b"\n\n")
        return WorkerAnswer("text/event-stream", b"".join(out))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ApiError(
            502, f"the inference worker's answer is not a completion: {exc}", "worker_bad_answer"
        ) from None
