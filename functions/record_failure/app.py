"""Any workflow: record a failed run with the error that ended it."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric
from pydantic import BaseModel, ConfigDict

from moe_control import pipeline
from moe_control.observability import workflow_step

HEARTBEAT_TIMEOUT = "States.HeartbeatTimeout"


class RecordFailureInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str | None = None
    error: dict[str, Any]


@workflow_step(RecordFailureInput)
def record_failure(p: RecordFailureInput) -> Any:
    if p.error.get("Error") == HEARTBEAT_TIMEOUT:
        # Its own metric with the service dimension only: template.yaml's TrainingHeartbeatLostAlarm watches it.
        with single_metric(name="TrainingHeartbeatsLost", unit=MetricUnit.Count, value=1):
            pass
    return pipeline.mark_failed(p.run_id, p.error)


lambda_handler = record_failure
