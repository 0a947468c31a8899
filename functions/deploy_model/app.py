"""Promotion: start a candidate inference endpoint for the approved model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import promotion
from moe_control.observability import workflow_step


class DeployModelInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: promotion.ModelRef
    placement: dict[str, Any]


@workflow_step(DeployModelInput)
def deploy_model(p: DeployModelInput) -> Any:
    return promotion.deploy(p.model.model_dump(), p.placement)


lambda_handler = deploy_model
