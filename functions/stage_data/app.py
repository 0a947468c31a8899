"""Training pipeline: stage the dataset next to the cluster (FSx for Lustre in AWS, a scratch folder locally)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import pipeline
from moe_control.observability import workflow_step


class StageDataInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str


@workflow_step(StageDataInput)
def stage_data(p: StageDataInput) -> Any:
    return pipeline.stage_data(p.run_id)


lambda_handler = stage_data
