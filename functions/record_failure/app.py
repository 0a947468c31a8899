"""Any workflow: record a failed run with the error that ended it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import pipeline
from moe_control.observability import workflow_step


class RecordFailureInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str | None = None
    error: dict[str, Any]


@workflow_step(RecordFailureInput)
def record_failure(p: RecordFailureInput) -> Any:
    return pipeline.mark_failed(p.run_id, p.error)


lambda_handler = record_failure
