"""The control plane's REST API behind API Gateway (Powertools APIGatewayRestResolver with validation).

Training jobs (start, list, get), model versions (list, approve), and the OpenAI-compatible completions that
are preprocessed here (limits, the model's tokenizer, prefix hash, response cache) and answered by an
inference worker. Every error is `{"error": {"message", "type", "code"}}`; `python functions/api/app.py`
prints the OpenAPI document that docs/openapi.json holds.
"""

import json
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.models import Server
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from moe_control import deployments, preprocess, response_cache, runs, workflows
from moe_control.api_models import (
    ApiError,
    ApproveModelRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    GatewayMessage,
    ModelList,
    ModelStatusFilter,
    ServedModel,
    ServedModelList,
    StartTrainingJobRequest,
    StartTrainingJobResponse,
    TrainingJob,
    TrainingJobList,
)
from moe_control.aws import client
from moe_control.errors import MalformedEvent, NoLiveEndpoint, RunNotFound
from moe_control.inference_client import call_worker, shape
from moe_control.observability import logger, metrics, tracer
from moe_control.registry import ModelPackageNotFound, ModelVersion

app = APIGatewayRestResolver(enable_validation=True)


def _errors(*statuses: int) -> dict[int, dict[str, Any]]:
    """A route's error statuses, with the 400 (invalid parameters) and API Gateway's own 403 (no valid API
    key) that every route has."""
    statuses = tuple(sorted({400, *statuses}))
    forbidden = {
        "description": "Forbidden: no valid x-api-key (answered by API Gateway)",
        "content": {"application/json": {"model": GatewayMessage}},
    }
    errors = {
        s: {"description": HTTPStatus(s).phrase, "content": {"application/json": {"model": ErrorResponse}}}
        for s in statuses
    }
    return {**errors, 403: forbidden}


def _responses(model: type, *errors: int, status: int = 200) -> dict[int, dict[str, Any]]:
    """The success body and the error statuses of a route, for the OpenAPI document."""
    ok = {"description": HTTPStatus(status).phrase, "content": {"application/json": {"model": model}}}
    return {status: ok, **_errors(*errors)}


def _error_response(exc: ApiError) -> Response:
    return Response(exc.status, "application/json", exc.body().model_dump_json())


# ------------------------------------------------------------------------------------------- errors
@app.exception_handler(ApiError)
def _api_error(exc: ApiError) -> Response:
    if exc.status >= 500:
        logger.warning(
            "request failed", extra={"status": exc.status, "code": exc.code, "reason": exc.message}
        )
    return _error_response(exc)


@app.exception_handler(RequestValidationError)
def _invalid_request(exc: RequestValidationError) -> Response:
    problems = []
    for e in exc.errors():
        # A union's member names (`list[...]`, `constrained-str`) are pydantic's, not the client's: left out.
        loc = [
            str(p) for p in e.get("loc", ()) if p != "body" and (isinstance(p, int) or str(p).isidentifier())
        ]
        where = ".".join(loc) or "body"
        msg = "body is not valid JSON" if e.get("type") == "json_invalid" else e.get("msg", e.get("type"))
        msg = str(msg).removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    return _error_response(ApiError(400, "; ".join(problems) or "invalid request", "invalid_request"))


@app.exception_handler(UnicodeDecodeError)
def _not_utf8(exc: UnicodeDecodeError) -> Response:
    return _error_response(ApiError(400, "body is not valid JSON (not UTF-8 text)", "invalid_request"))


@app.exception_handler(RequestUnsupportedContentType)
def _unsupported_media_type(exc: RequestUnsupportedContentType) -> Response:
    return _error_response(
        ApiError(415, "the body must be JSON (Content-Type: application/json)", "unsupported_media_type")
    )


@app.not_found
def _no_route(exc: Exception) -> Response:
    event = app.current_event
    return _error_response(ApiError(404, f"no route for {event.http_method} {event.path}", "no_route"))


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response:
    # Logged with its trace for the operator; the client gets a message, never the trace.
    logger.exception("unhandled error")
    return _error_response(ApiError(500, f"internal error ({type(exc).__name__})", "internal_error"))


# ------------------------------------------------------------------------------------------- training jobs
@app.post(
    "/training-jobs",
    status_code=202,
    summary="Start the training pipeline on an uploaded dataset manifest",
    description="The manifest must exist; its current version (ETag) names the run, so starting the same "
    "manifest twice is one run (`duplicate: true` the second time).",
    responses=_responses(StartTrainingJobResponse, 404, 415, 502, status=202),
    tags=["training"],
)
@tracer.capture_method
def start_training_job(request: StartTrainingJobRequest) -> StartTrainingJobResponse:
    bucket, _, key = request.dataset_uri[5:].partition("/")
    s3 = client("s3")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            raise ApiError(
                404, f"no dataset manifest at {request.dataset_uri}", "dataset_not_found"
            ) from None
        if code in ("403", "AccessDenied"):
            raise ApiError(400, f"the API may not read {request.dataset_uri}", "dataset_forbidden") from None
        raise ApiError(502, f"S3 did not answer for {request.dataset_uri}: {code}", "s3_error") from None
    # The ETag without quotes, as S3's EventBridge event carries it: an upload and an API start of the same
    # manifest version name the same run.
    etag = head["ETag"].strip('"')
    try:
        start = workflows.route({"dataset_uri": request.dataset_uri, "etag": etag})
    except MalformedEvent as exc:
        raise ApiError(400, str(exc), "invalid_dataset_uri") from None
    started = _start_once(start)
    metrics.add_metric(
        name="DuplicateTrainingStarts" if started["duplicate"] else "TrainingJobsStarted",
        unit=MetricUnit.Count,
        value=1,
    )
    logger.info("training job start", extra={"run_id": start.name, **started})
    return StartTrainingJobResponse(
        run_id=start.name, execution_arn=started["execution_arn"], duplicate=started["duplicate"]
    )


def _start_once(start: workflows.WorkflowStart) -> dict[str, Any]:
    """Start the run's execution unless one of that name exists. StartExecution alone cannot tell: with the same
    name and input as a RUNNING execution it succeeds and returns that execution (AWS, and moto, do this)."""
    arn = (
        workflows.state_machine_arn(start.workflow).replace(":stateMachine:", ":execution:")
        + f":{start.name}"
    )
    sfn = client("stepfunctions")
    try:
        sfn.describe_execution(executionArn=arn)
        return {"workflow": start.workflow, "execution_arn": arn, "duplicate": True}
    except sfn.exceptions.ExecutionDoesNotExist:
        return workflows.start(start)
    except sfn.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("AccessDeniedException", "AccessDenied"):
            raise
        # Without states:DescribeExecution the start is still at most once; only `duplicate` may be wrong.
        logger.warning("cannot look up the execution; starting it by name", extra={"execution_arn": arn})
        return workflows.start(start)


@app.get(
    "/training-jobs",
    summary="Training runs, newest first",
    tags=["training"],
    responses=_responses(TrainingJobList, 400),
)
@tracer.capture_method
def list_training_jobs(
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many runs.")] = 100,
) -> TrainingJobList:
    found = runs.list_runs(limit=limit)
    jobs = [TrainingJob.model_validate(r.public()) for r in found]
    return TrainingJobList(training_jobs=jobs, count=len(jobs))


@app.get(
    "/training-jobs/<run_id>",
    summary="One training run",
    tags=["training"],
    responses=_responses(TrainingJob, 404),
)
@tracer.capture_method
def get_training_job(run_id: Annotated[str, Path(min_length=1, max_length=128)]) -> TrainingJob:
    try:
        return TrainingJob.model_validate(runs.get_run(run_id).public())
    except RunNotFound as exc:
        raise ApiError(404, str(exc), "run_not_found") from None


# ------------------------------------------------------------------------------------------- models
@app.get(
    "/models",
    summary="Versions of the model package group (the SageMaker Model Registry)",
    tags=["models"],
    responses=_responses(ModelList, 400),
)
@tracer.capture_method
def list_models(
    status: Annotated[ModelStatusFilter | None, Query(description="Only versions with this status.")] = None,
) -> ModelList:
    from moe_control import registry

    models = registry.list_models(status=status)
    return ModelList(models=models, count=len(models))


@app.post(
    "/models/<model_id>/approve",
    summary="Approve a model version; its approval starts the promotion workflow",
    description="`model_id` is the version number in the stage's model package group (GET /models lists "
    "them). Approving emits SageMaker's `Model Package State Change` event, which starts `promotion`. An "
    "already approved version is answered as it is and not approved again.",
    tags=["models"],
    responses=_responses(ModelVersion, 404, 415),
)
@tracer.capture_method
def approve_model(
    model_id: Annotated[str, Path(pattern=r"^[0-9]{1,9}$", description="The model package version number.")],
    request: Annotated[ApproveModelRequest | None, Body()] = None,
) -> ModelVersion:
    from moe_control import registry

    try:
        model = registry.get_model(model_id)
        if model.approval_status == "Approved":
            return model
        approved = registry.approve(model.arn, (request or ApproveModelRequest()).description)
    except ModelPackageNotFound as exc:
        raise ApiError(404, str(exc), "model_not_found") from None
    logger.info("model approved", extra={"model_package_arn": approved.arn})
    metrics.add_metric(name="ModelsApproved", unit=MetricUnit.Count, value=1)
    return approved


# ------------------------------------------------------------------------------------------- OpenAI-compatible
def _live() -> deployments.Deployment:
    try:
        return deployments.live()
    except NoLiveEndpoint as exc:
        raise ApiError(503, str(exc), "no_live_endpoint", "server_error") from None


def _complete(request: CompletionRequest | ChatCompletionRequest) -> Response:
    deployment = _live()
    prepared = preprocess.prepare(request, deployment)
    headers = {"x-prefix-hash": prepared.prefix_hash}
    cache = response_cache.from_env()
    key = None
    if cache is None:
        headers["x-cache"] = "off"
    elif not prepared.deterministic:
        headers["x-cache"] = "bypass"
    else:
        key = response_cache.cache_key(deployment.artifact_uri, prepared.route, prepared.worker_body)
        hit = cache.get(key)
        if hit is not None:
            metrics.add_metric(name="ResponseCacheHits", unit=MetricUnit.Count, value=1)
            return Response(200, hit.content_type, hit.body.decode(), headers={**headers, "x-cache": "hit"})
        headers["x-cache"] = "miss" if cache.available else "unavailable"
    urls = preprocess.endpoint_urls(deployment)
    url = preprocess.pick_endpoint(urls, prepared.prefix_hash) if urls else None
    answer = shape(
        call_worker(deployment, url, prepared.worker_body),
        prepared.model,
        chat=prepared.route == "chat",
        stream=prepared.stream,
    )
    if key is not None and cache.put(key, response_cache.CachedResponse(answer.content_type, answer.body)):
        metrics.add_metric(name="ResponseCacheMisses", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="PromptTokens", unit=MetricUnit.Count, value=len(prepared.prompt_ids))
    return Response(200, answer.content_type, answer.body.decode(), headers=headers)


def _completion_responses(model: type) -> dict[int, dict[str, Any]]:
    ok = {
        "description": "The completion (`stream: true`: the SSE transcript, ending with `data: [DONE]`). "
        "Headers: `x-prefix-hash`, `x-cache` (hit, miss, bypass, off, unavailable).",
        "content": {
            "application/json": {"model": model},
            "text/event-stream": {
                "schema": {
                    "description": "Each server-sent event: `data` is one JSON chunk, then `[DONE]`.",
                    "type": "object",
                    "properties": {"data": {"type": "string"}},
                    "required": ["data"],
                }
            },
        },
    }
    return {200: ok, **_errors(404, 415, 429, 500, 502, 503)}


@app.post(
    "/v1/completions",
    summary="OpenAI-compatible completion, answered by the live model",
    tags=["inference"],
    responses=_completion_responses(CompletionResponse),
)
@tracer.capture_method
def completions(request: CompletionRequest):  # -> Response: the body is passed through unvalidated
    return _complete(request)


@app.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completion, answered by the live model",
    tags=["inference"],
    responses=_completion_responses(ChatCompletionResponse),
)
@tracer.capture_method
def chat_completions(request: ChatCompletionRequest):
    return _complete(request)


@app.get(
    "/v1/models",
    summary="The live model (its id is what `model` names)",
    tags=["inference"],
    responses=_responses(ServedModelList),
)
@tracer.capture_method
def served_models() -> ServedModelList:
    try:
        d = deployments.live()
    except NoLiveEndpoint:
        return ServedModelList(data=[])
    model = ServedModel(
        id=preprocess.served_model_name(d), model_package_arn=d.model_package_arn, artifact_uri=d.artifact_uri
    )
    return ServedModelList(data=[model])


# ------------------------------------------------------------------------------------------- handler, OpenAPI
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    refused = _refuse_non_json(event)
    return refused if refused is not None else app.resolve(event, context)


def _refuse_non_json(event: dict[str, Any]) -> dict[str, Any] | None:
    """415 for a body that says it is not JSON. Powertools parses the body (a multipart one too, failing on a
    malformed one) before any middleware of ours could look, so this check comes first."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    media_type = str(headers.get("content-type", "")).split(";")[0].strip().lower()
    if not event.get("body") or not media_type or media_type.endswith(("/json", "+json")):
        return None
    error = ApiError(
        415,
        f"the body must be JSON (Content-Type: application/json), not {media_type}",
        "unsupported_media_type",
    )
    return {
        "statusCode": 415,
        "headers": {"Content-Type": "application/json"},
        "body": error.body().model_dump_json(),
        "isBase64Encoded": False,
    }


def openapi_json() -> str:
    """The OpenAPI document of these routes (docs/openapi.json; tests/api checks that it is current)."""
    text = app.get_openapi_json_schema(
        title="moe-on-aws control plane API",
        version="1.0.0",
        description="Training jobs, model versions and OpenAI-compatible completions. In AWS every route needs "
        "the API key (header `x-api-key`); see docs/api.md.",
        servers=[
            Server(
                url="/v1",
                description="The API's stage: https://API_ID.execute-api.REGION.amazonaws.com/v1 in AWS, "
                "http://127.0.0.1:PORT/v1 on the local cloud.",
            )
        ],
        security_schemes={"api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"}},
        security=[{"api_key": []}],
    )
    # Powertools documents its own 422 for validation errors; this API answers 400 with ErrorResponse instead.
    doc = json.loads(text)
    for operations in doc["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
    schemas = doc["components"]["schemas"]
    for name in ("HTTPValidationError", "ResponseValidationError", "ValidationError"):  # referrers first
        others = {"paths": doc["paths"], "schemas": {k: v for k, v in schemas.items() if k != name}}
        if f'"#/components/schemas/{name}"' not in json.dumps(others):
            schemas.pop(name, None)
    return json.dumps(doc, indent=2) + "\n"


if __name__ == "__main__":
    print(openapi_json(), end="")
