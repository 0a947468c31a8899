"""Training pipeline: register the trained model in the Model Registry, PendingManualApproval."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import pipeline
from moe_control.observability import workflow_step


class RegisterModelInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str


@workflow_step(RegisterModelInput)
def register_model(p: RegisterModelInput) -> Any:
    return pipeline.register(p.run_id)


lambda_handler = register_model
