"""The control plane's REST API behind API Gateway: routes with Powertools' APIGatewayRestResolver."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from moe_control.errors import RunNotFound
from moe_control.runs import get_run, list_runs

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = APIGatewayRestResolver(enable_validation=True)


@app.get("/training-jobs")
@tracer.capture_method
def list_training_jobs() -> dict[str, Any]:
    runs = list_runs()
    return {"training_jobs": [r.model_dump() for r in runs], "count": len(runs)}


@app.get("/training-jobs/<run_id>")
@tracer.capture_method
def get_training_job(run_id: str) -> dict[str, Any]:
    try:
        return get_run(run_id).model_dump()
    except RunNotFound as exc:
        raise NotFoundError(str(exc)) from None


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
