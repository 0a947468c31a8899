"""The HTTP layer (Starlette, served by uvicorn): OpenAI-compatible completions and chat completions, with
server-sent-event streaming, `/v1/models`, `/health` and `/metrics`. Bad requests get a 4xx with an OpenAI-style
error body; a full queue gets 429."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from moe_core.serve.async_engine import AsyncEngine, QueueFull, RequestHandle
from moe_core.serve.chat_template import render_chat
from moe_core.serve.detokenizer import IncrementalDetokenizer, Tokenizer
from moe_core.serve.metrics import ServerMetrics
from moe_core.serve.protocol import ChatCompletionRequest, CompletionRequest, Usage, error_body
from moe_core.serve.sequence import SamplingParams


@dataclass
class ServerLimits:
    max_prompt_tokens: int
    max_output_tokens: int
    max_model_len: int


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_


@dataclass
class Server:
    engine: AsyncEngine
    tokenizer: Tokenizer
    model_name: str
    limits: ServerLimits
    metrics: ServerMetrics

    # ---- request parsing --------------------------------------------------------------------------------
    async def _body(self, request: Request, model_cls):
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc}", "invalid_json") from exc
        if not isinstance(data, dict):
            raise RequestError(400, "request body must be a JSON object", "invalid_json")
        try:
            req = model_cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise RequestError(400, problems, "invalid_request") from exc
        if req.model is not None and req.model != self.model_name:
            raise RequestError(
                404,
                f"model {req.model!r} is not served here; this server has {self.model_name!r}",
                "model_not_found",
            )
        return req

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        vocab = self.tokenizer.vocab_size
        bad = [t for t in prompt if t >= vocab]
        if bad:
            raise RequestError(
                400, f"token ids {bad[:5]} outside the vocabulary [0, {vocab})", "invalid_token_ids"
            )
        return list(prompt)

    def _check_limits(self, prompt_ids: list[int], max_tokens: int) -> None:
        lim = self.limits
        if not prompt_ids:
            raise RequestError(400, "the prompt encodes to no tokens", "empty_prompt")
        if len(prompt_ids) > lim.max_prompt_tokens:
            raise RequestError(
                400,
                f"prompt has {len(prompt_ids)} tokens; the limit is {lim.max_prompt_tokens}",
                "prompt_too_long",
            )
        if max_tokens > lim.max_output_tokens:
            raise RequestError(
                400,
                f"max_tokens {max_tokens} exceeds the limit {lim.max_output_tokens}",
                "max_tokens_too_large",
            )
        if len(prompt_ids) + max_tokens > lim.max_model_len:
            raise RequestError(
                400,
                f"prompt ({len(prompt_ids)}) + max_tokens ({max_tokens}) exceeds the context of {lim.max_model_len}",
                "context_length_exceeded",
            )

    # ---- endpoints --------------------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        req = await self._body(request, CompletionRequest)
        return await self._generate(request, req, self._prompt_ids(req.prompt), chat=False)

    async def chat_completions(self, request: Request) -> Response:
        req = await self._body(request, ChatCompletionRequest)
        prompt = render_chat([(m.role, m.content) for m in req.messages])
        return await self._generate(request, req, self.tokenizer.encode(prompt), chat=True)

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model_name,
                        "object": "model",
                        "owned_by": "moe-on-aws",
                        "max_model_len": self.limits.max_model_len,
                    }
                ],
            }
        )

    async def health(self, request: Request) -> Response:
        if self.engine.error is not None:
            return JSONResponse({"status": "error", "error": repr(self.engine.error)}, status_code=503)
        return JSONResponse(
            {"status": "ok", "model": self.model_name, "in_flight": self.engine.num_in_flight}
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- generation -------------------------------------------------------------------------------------
    async def _generate(self, request: Request, req, prompt_ids: list[int], chat: bool) -> Response:
        self._check_limits(prompt_ids, req.max_tokens)
        params = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            ignore_eos=req.ignore_eos,
        )
        try:
            handle = await self.engine.submit(prompt_ids, params)
        except QueueFull as exc:
            raise RequestError(
                429, f"server busy: {exc}; retry later", "queue_full", "rate_limit_error"
            ) from exc
        except ValueError as exc:
            raise RequestError(400, str(exc), "invalid_request") from exc
        detok = IncrementalDetokenizer(self.tokenizer, req.stop)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if req.stream:
            return StreamingResponse(
                self._sse(handle, detok, rid, chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        text, finish_reason, n_out = "", None, 0
        try:
            async for piece, reason, count in self._pieces(handle, detok):
                text, finish_reason, n_out = text + piece, reason, count
        finally:
            self.engine.abort(handle)  # no-op when finished; frees the sequence if the client went away
        return JSONResponse(self._final_body(rid, chat, text, finish_reason, handle, n_out))

    async def _pieces(self, handle: RequestHandle, detok: IncrementalDetokenizer) -> AsyncIterator[tuple]:
        """(new text, finish_reason or None, output tokens so far) as tokens arrive."""
        n_out = 0
        async for event in self.engine.stream(handle):
            if event.token_id >= 0:
                n_out += 1
                if n_out == 1:
                    self.metrics.ttft.observe(time.monotonic() - handle.arrival)
                detok.add(event.token_id)
            if detok.stopped:
                yield detok.emit(final=True), "stop", n_out
                self.engine.abort(handle)
                break
            if event.finished:
                yield detok.emit(final=True), event.finish_reason.value, n_out
                break
            yield detok.emit(), None, n_out
        self.metrics.latency.observe(time.monotonic() - handle.arrival)
        self.metrics.prompt_tokens.inc(handle.seq.num_prompt_tokens)
        self.metrics.generation_tokens.inc(n_out)

    def _usage(self, handle: RequestHandle, n_out: int) -> dict:
        n_prompt = handle.seq.num_prompt_tokens
        return Usage(
            prompt_tokens=n_prompt,
            completion_tokens=n_out,
            total_tokens=n_prompt + n_out,
            cached_prompt_tokens=handle.seq.num_cached_prompt_tokens,
        ).model_dump()

    def _final_body(self, rid, chat, text, finish_reason, handle, n_out) -> dict:
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": self._usage(handle, n_out),
        }

    async def _sse(self, handle, detok, rid, chat) -> AsyncIterator[bytes]:
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish_reason, usage=None, role=False) -> bytes:
            if chat:
                delta = {"role": "assistant"} if role else ({} if text is None else {"content": text})
                choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            body = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": self.model_name,
                "choices": [choice],
            }
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n".encode()

        try:
            if chat:
                yield chunk(None, None, role=True)
            async for piece, finish_reason, n_out in self._pieces(handle, detok):
                if finish_reason is not None:
                    if piece:
                        yield chunk(piece, None)
                    yield chunk(None, finish_reason, usage=self._usage(handle, n_out))
                elif piece:
                    yield chunk(piece, None)
            yield b"data: [DONE]\n\n"
        finally:
            self.engine.abort(handle)


def create_app(server: Server) -> Starlette:
    def guarded(endpoint, name: str):
        async def handler(request: Request) -> Response:
            try:
                response = await endpoint(request)
            except RequestError as exc:
                response = JSONResponse(
                    error_body(exc.message, type_=exc.type, code=exc.code), status_code=exc.status
                )
            server.metrics.requests.labels(name, str(response.status_code)).inc()
            return response

        return handler

    routes = [
        Route("/v1/completions", guarded(server.completions, "completions"), methods=["POST"]),
        Route("/v1/chat/completions", guarded(server.chat_completions, "chat_completions"), methods=["POST"]),
        Route("/v1/models", guarded(server.models, "models"), methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_endpoint, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.engine.stop()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app
