"""EventBridge target for every workflow-starting event: route it, and start the workflow at most once.

Idempotent on DynamoDB (Powertools idempotency): the key is the workflow and its execution name (the run id,
the model package version, the node and event id), so a duplicate delivery returns the first start's answer and
starts nothing; the execution name makes Step Functions refuse a second execution as well.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from moe_control import workflows
from moe_control.errors import UnknownEvent
from moe_control.observability import logger, metrics, tracer

persistence = DynamoDBPersistenceLayer(table_name=os.environ.get("IDEMPOTENCY_TABLE", "idempotency"))


def _mark_duplicate(response: dict[str, Any], data: Any) -> dict[str, Any]:
    """Called only when the answer comes from the idempotency store: this delivery is a duplicate."""
    return {**response, "duplicate": True}


config = IdempotencyConfig(expires_after_seconds=7 * 24 * 3600, response_hook=_mark_duplicate)


@idempotent_function(data_keyword_argument="key", persistence_store=persistence, config=config)
def start_once(key: dict[str, str], start: workflows.WorkflowStart) -> dict[str, Any]:
    return workflows.start(start)


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config.register_lambda_context(context)
    try:
        start = workflows.route(event)
    except UnknownEvent as exc:
        logger.warning("no workflow for this event", extra={"reason": str(exc)})
        metrics.add_metric(name="UnroutedEvents", unit=MetricUnit.Count, value=1)
        return {"started": False, "reason": str(exc)}
    result = start_once(key={"workflow": start.workflow, "name": start.name}, start=start)
    metrics.add_dimension(name="workflow", value=start.workflow)
    name = "DuplicateEvents" if result["duplicate"] else "WorkflowsStarted"
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    logger.info("workflow start", extra=result)
    return {"started": not result["duplicate"], **result}
