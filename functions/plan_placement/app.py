"""Promotion: the expert placement plan from the model's routing statistics."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import promotion
from moe_control.observability import workflow_step


class PlanPlacementInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifact_uri: str


@workflow_step(PlanPlacementInput)
def plan_placement(p: PlanPlacementInput) -> Any:
    return promotion.plan_placement(p.artifact_uri)


lambda_handler = plan_placement
