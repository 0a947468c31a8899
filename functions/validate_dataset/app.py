"""Training pipeline: validate the uploaded dataset manifest (every file listed, with its size) and record the run."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import pipeline
from moe_control.observability import workflow_step


class ValidateDatasetInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: dict[str, Any]
    run_id: str


@workflow_step(ValidateDatasetInput)
def validate_dataset(p: ValidateDatasetInput) -> Any:
    return pipeline.validate_dataset(p.event, p.run_id)


lambda_handler = validate_dataset
