"""Request preprocessing before an inference worker: limits, the deployed model's own tokenizer, the chat
template, and the prefix hash that sends requests sharing a prefix to the same worker (its prefix cache).

The worker gets token ids, never text: the API counts tokens once, enforces its limits on them, and keys the
response cache and the routing on them. The tokenizer is `tokenizer.json` in the live artifact's S3 folder,
kept in this process per artifact URI and re-read only when its ETag changes.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from moe_control.api_models import ApiError, ChatCompletionRequest, CompletionRequest
from moe_control.aws import client
from moe_control.chat_template import render_chat
from moe_control.deployments import Deployment
from moe_control.settings import env_int


# ------------------------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int
    max_output_tokens: int
    prefix_hash_tokens: int  # how much of the prompt names its prefix for routing
    block_tokens: int  # the worker's prefix cache shares whole blocks of this many tokens

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_prompt_tokens=env_int("MAX_PROMPT_TOKENS", 2048),
            max_output_tokens=env_int("MAX_OUTPUT_TOKENS", 512),
            prefix_hash_tokens=env_int("PREFIX_HASH_TOKENS", 256),
            block_tokens=env_int("PREFIX_BLOCK_TOKENS", 16),
        )


def check_max_tokens(max_tokens: int, limits: Limits) -> None:
    if max_tokens > limits.max_output_tokens:
        raise ApiError(
            400,
            f"max_tokens {max_tokens} exceeds the limit of {limits.max_output_tokens} output tokens",
            "max_tokens_too_large",
        )


def check_prompt(ids: list[int], limits: Limits) -> None:
    if not ids:
        raise ApiError(400, "the prompt encodes to no tokens", "empty_prompt")
    if len(ids) > limits.max_prompt_tokens:
        raise ApiError(
            400,
            f"the prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens}",
            "prompt_too_long",
        )


# ------------------------------------------------------------------------------------------- the tokenizer
class ModelTokenizer:
    """The deployed model's Hugging Face tokenizer, encoding as the worker does (no automatic BOS)."""

    def __init__(self, tokenizer_json: str, source: str):
        from tokenizers import Tokenizer  # the Rust wheel: loaded only by the routes that tokenize

        try:
            self.hf = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ApiError(
                500, f"the deployed model's tokenizer {source} cannot be read: {exc}", "tokenizer_invalid"
            ) from None
        self.vocab_size = self.hf.get_vocab_size()
        self.source = source

    def encode(self, text: str) -> list[int]:
        # Special tokens in the text (the chat template's) are parsed as such, as the worker does.
        return self.hf.encode(text, add_special_tokens=False).ids


@dataclass
class _Cached:
    etag: str
    tokenizer: ModelTokenizer
    checked_at: float


_TOKENIZERS: dict[str, _Cached] = {}
_TOKENIZERS_LOCK = threading.Lock()
TOKENIZER_RECHECK_S = 60.0  # a warm function asks S3 for the ETag at most this often


def _tokenizer_location(artifact_uri: str) -> tuple[str, str]:
    if not artifact_uri.startswith("s3://"):
        raise ApiError(
            500, f"the live deployment's artifact is not an s3:// folder: {artifact_uri!r}", "bad_artifact"
        )
    bucket, _, prefix = artifact_uri[5:].partition("/")
    return bucket, (prefix.rstrip("/") + "/tokenizer.json").lstrip("/")


def tokenizer_for(artifact_uri: str) -> ModelTokenizer:
    """The tokenizer of the artifact, from this process's cache while S3's ETag of the file is unchanged."""
    bucket, key = _tokenizer_location(artifact_uri)
    source = f"s3://{bucket}/{key}"
    s3 = client("s3")
    now = time.monotonic()
    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(artifact_uri)
    try:
        if cached is not None:
            if now - cached.checked_at < TOKENIZER_RECHECK_S:
                return cached.tokenizer
            if s3.head_object(Bucket=bucket, Key=key)["ETag"] == cached.etag:
                cached.checked_at = now
                return cached.tokenizer
        obj = s3.get_object(Bucket=bucket, Key=key)
        text = obj["Body"].read().decode("utf-8")
    except s3.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            raise ApiError(
                500, f"the deployed model has no tokenizer: {source} does not exist", "tokenizer_missing"
            ) from None
        raise ApiError(
            502, f"cannot read the tokenizer {source}: {code or exc}", "tokenizer_unreadable"
        ) from None
    tokenizer = ModelTokenizer(text, source)
    with _TOKENIZERS_LOCK:
        _TOKENIZERS[artifact_uri] = _Cached(obj["ETag"], tokenizer, now)
    return tokenizer


# ------------------------------------------------------------------------------------------- prefix hash, routing
def prefix_hash(ids: list[int], limits: Limits) -> str:
    """sha256 of the prompt's first whole blocks (up to `prefix_hash_tokens`): the part the worker's prefix
    cache can share. The last prompt token is never shared (its logits are computed), so it is not counted.
    A prompt shorter than one block shares nothing: its whole token list is hashed, which spreads such
    prompts over the endpoints instead of piling them onto one."""
    shareable = min(len(ids) - 1, limits.prefix_hash_tokens)
    n = max(0, shareable) // limits.block_tokens * limits.block_tokens
    chosen = ids[:n] if n else ids
    return hashlib.sha256(struct.pack(f"<{len(chosen)}I", *chosen)).hexdigest()


def pick_endpoint(urls: list[str], prefix: str) -> str:
    """Rendezvous hashing: the same prefix goes to the same URL, and adding or removing one URL moves only the
    prefixes that URL wins or held."""
    if not urls:
        raise ValueError("no endpoint URLs to choose from")
    return max(urls, key=lambda url: hashlib.sha256(f"{prefix}|{url}".encode()).digest())


def endpoint_urls(deployment: Deployment) -> list[str]:
    """The HTTP URLs serving the live model (the local backend's workers). Today a deployment has one; a
    SageMaker endpoint has none (it is invoked by name, and SageMaker balances its own instances)."""
    return [deployment.url.rstrip("/")] if deployment.url else []


def served_model_name(deployment: Deployment) -> str:
    """The `model` clients send and GET /v1/models lists: the live endpoint's id."""
    return deployment.endpoint_id


# ------------------------------------------------------------------------------------------- the whole step
@dataclass(frozen=True)
class Prepared:
    route: str  # "completions" | "chat"
    model: str
    prompt_ids: list[int]
    prefix_hash: str
    worker_body: dict[str, Any]  # what the worker's /v1/completions gets: token ids and sampling fields
    deterministic: bool
    stream: bool


def prepare(
    req: CompletionRequest | ChatCompletionRequest, deployment: Deployment, limits: Limits | None = None
) -> Prepared:
    """Validate against the limits and the live model, tokenize, hash the prefix; raises ApiError (4xx/5xx)."""
    limits = limits or Limits.from_env()
    model = served_model_name(deployment)
    if req.model is not None and req.model != model:
        raise ApiError(
            404,
            f"model {req.model!r} is not served; the live model is {model!r} (GET /v1/models)",
            "model_not_found",
        )
    check_max_tokens(req.max_tokens, limits)
    tokenizer = tokenizer_for(deployment.artifact_uri)
    if isinstance(req, ChatCompletionRequest):
        route = "chat"
        ids = tokenizer.encode(render_chat([(m.role, m.content) for m in req.messages]))
    elif isinstance(req.prompt, str):
        route, ids = "completions", tokenizer.encode(req.prompt)
    else:
        route, ids = "completions", list(req.prompt)
        bad = [t for t in ids if t >= tokenizer.vocab_size]
        if bad:
            raise ApiError(
                400,
                f"token ids {bad[:5]} are outside the model's vocabulary [0, {tokenizer.vocab_size})",
                "invalid_token_ids",
            )
    check_prompt(ids, limits)
    return Prepared(
        route=route,
        model=model,
        prompt_ids=ids,
        prefix_hash=prefix_hash(ids, limits),
        worker_body={"prompt": ids, **req.sampling()},
        deterministic=req.deterministic,
        stream=req.stream,
    )


def clear_tokenizer_cache() -> None:
    """Forget every cached tokenizer (tests; a function instance never needs it)."""
    with _TOKENIZERS_LOCK:
        _TOKENIZERS.clear()
