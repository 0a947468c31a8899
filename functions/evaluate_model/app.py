"""Training pipeline: the gate between training and the registry (final loss finite and below chance)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import pipeline
from moe_control.observability import workflow_step


class EvaluateModelInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    result: dict[str, Any]


@workflow_step(EvaluateModelInput)
def evaluate_model(p: EvaluateModelInput) -> Any:
    return pipeline.evaluate(p.run_id, p.result)


lambda_handler = evaluate_model
