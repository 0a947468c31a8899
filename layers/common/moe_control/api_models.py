"""The REST API's request and response bodies (pydantic): what functions/api validates and docs/openapi.json shows.

The OpenAI-compatible bodies mirror the inference worker's own (`moe_core.serve.protocol`, which the layer may
not import: it lives with torch); tests/api checks that both accept the same fields. Unknown fields are ignored
there as here, since OpenAI clients send many; known fields with values we do not serve are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from moe_control.errors import ControlPlaneError
from moe_control.events import ApiTrainingRequest
from moe_control.registry import ApprovalStatus, ModelVersion
from moe_control.runs import Run

MAX_STOP_SEQUENCES = 4


def _integral(value: Any) -> Any:
    # JSON has one number type: 2.0 is an integer to JSON Schema (and to OpenAI clients); true is not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


StopText = Annotated[str, Field(min_length=1)]


# ---------------------------------------------------------------------------------------------- errors
class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong, in words; never a stack trace.")
    type: str = Field(description="invalid_request_error, not_found_error, rate_limit_error, server_error")
    code: str | None = Field(default=None, description="A stable name for the error, e.g. prompt_too_long.")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body (OpenAI's shape, on every route)."""

    error: ErrorDetail


class GatewayMessage(BaseModel):
    """API Gateway's own answers, before the function runs: 403 without a valid API key, 429 when throttled."""

    message: str


class ApiError(ControlPlaneError):
    """A request the API answers with an error body: raised anywhere below a route, turned into the response."""

    def __init__(self, status: int, message: str, code: str, type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.type = type_ or _ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, code=self.code))


_ERROR_TYPES = {404: "not_found_error", 429: "rate_limit_error"}


# ---------------------------------------------------------------------------------------------- training jobs
class StartTrainingJobRequest(ApiTrainingRequest):
    """Start the training pipeline on a dataset manifest already uploaded to S3."""

    model_config = ConfigDict(extra="forbid", strict=True)


class StartTrainingJobResponse(BaseModel):
    run_id: str = Field(description="The run's id: the same manifest version always names the same run.")
    execution_arn: str = Field(description="The training_pipeline execution (named after the run id).")
    duplicate: bool = Field(description="True when this manifest version had already started its run.")


class TrainingJob(Run):
    """A training run as the API shows it: the runs table's record without the workflow's task token."""

    task_token: SkipJsonSchema[str | None] = Field(default=None, exclude=True, repr=False)


class TrainingJobList(BaseModel):
    training_jobs: list[TrainingJob]
    count: int


# ---------------------------------------------------------------------------------------------- models
class ModelList(BaseModel):
    models: list[ModelVersion] = Field(
        description="Versions of the stage's model package group, newest first."
    )
    count: int


class ApproveModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    description: str = Field(default="approved through the API", min_length=1, max_length=1024)


ModelStatusFilter = ApprovalStatus


# ---------------------------------------------------------------------------------------------- OpenAI-compatible
class _SamplingFields(BaseModel):
    # Strict: JSON types as written (no "1" for 1, no false for 0); an int is still a valid float.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(
        default=None, description="The id GET /v1/models lists; omitted = the live model."
    )
    max_tokens: int = Field(default=16, ge=1, description="At most MAX_OUTPUT_TOKENS (default 512).")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        default=None, description=f"A string or up to {MAX_STOP_SEQUENCES} (non-empty)."
    )
    # Up to 2**53 - 1: exact as a JSON number in every client (JavaScript's too); the worker takes up to 2**63.
    seed: int | None = Field(default=None, ge=0, le=2**53 - 1, description="Same seed, same output.")
    stream: bool = Field(
        default=False, description="Answer the SSE transcript (text/event-stream), buffered."
    )
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is served.")
    ignore_eos: bool = Field(default=False, description="vLLM's extension: generate exactly max_tokens.")

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {k: _integral(v) if k in ("max_tokens", "n", "seed") else v for k, v in data.items()}
        if isinstance(data.get("prompt"), list):
            data["prompt"] = [_integral(t) for t in data["prompt"]]
        return data

    @property
    def deterministic(self) -> bool:
        """Greedy, or sampled from a given seed: the same request always gets the same answer."""
        return self.temperature == 0 or self.seed is not None

    def sampling(self) -> dict[str, Any]:
        """The fields the worker gets besides the prompt (`model` and `n` are answered here)."""
        stops = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": stops,
            "seed": self.seed,
            "stream": self.stream,
            "ignore_eos": self.ignore_eos,
        }


TokenId = Annotated[int, Field(ge=0)]


class CompletionRequest(_SamplingFields):
    prompt: Annotated[str, Field(min_length=1)] | Annotated[list[TokenId], Field(min_length=1)] = Field(
        description="Text, or token ids of the deployed model's tokenizer."
    )


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_prompt_tokens: int = Field(default=0, description="Of prompt_tokens, read from the prefix cache.")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length", "abort"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "abort"] | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ServedModel(BaseModel):
    id: str = Field(description="The name to send as `model`: the live endpoint's id.")
    object: Literal["model"] = "model"
    owned_by: str = "moe-on-aws"
    model_package_arn: str
    artifact_uri: str


class ServedModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ServedModel]
