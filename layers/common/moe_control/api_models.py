"""The REST API's request and response bodies (pydantic): what functions/api validates and docs/openapi.json shows.

The OpenAI-compatible bodies mirror the inference worker's own (`moe_core.serve.protocol`, which the layer may
not import: it lives with torch); tests/api checks that both accept the same fields. Unknown fields are ignored
there as here, since OpenAI clients send many; known fields with values we do not serve are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from moe_control.errors import ControlPlaneError
from moe_control.events import ApiTrainingRequest
from moe_control.registry import ApprovalStatus, ModelVersion
from moe_control.runs import Run

MAX_STOP_SEQUENCES = 4


# ---------------------------------------------------------------------------------------------- errors
class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong, in words; never a stack trace.")
    type: str = Field(description="invalid_request_error, not_found_error, rate_limit_error, server_error")
    code: str | None = Field(default=None, description="A stable name for the error, e.g. prompt_too_long.")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body (OpenAI's shape, on every route)."""

    error: ErrorDetail


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
    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="approved through the API", min_length=1, max_length=1024)


ModelStatusFilter = ApprovalStatus


# ---------------------------------------------------------------------------------------------- OpenAI-compatible
class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="The id GET /v1/models lists; omitted = the live model."
    )
    max_tokens: int = Field(default=16, ge=1, description="At most MAX_OUTPUT_TOKENS (default 512).")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(default=None, description=f"Up to {MAX_STOP_SEQUENCES} strings.")
    seed: int | None = Field(default=None, ge=0, lt=2**63, description="Same seed, same output.")
    stream: bool = Field(
        default=False, description="Answer the SSE transcript (text/event-stream), buffered."
    )
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is served.")
    ignore_eos: bool = Field(default=False, description="vLLM's extension: generate exactly max_tokens.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return v

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


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] = Field(description="Text, or token ids of the deployed model's tokenizer.")

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list[int]) -> str | list[int]:
        if len(v) == 0:
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and any(t < 0 for t in v):
            raise ValueError("token ids must be >= 0")
        return v


class ChatMessage(BaseModel):
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
