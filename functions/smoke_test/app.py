"""Promotion: one greedy completion against the candidate endpoint."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import promotion
from moe_control.observability import workflow_step


class SmokeTestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: promotion.EndpointRef


@workflow_step(SmokeTestInput)
def smoke_test(p: SmokeTestInput) -> Any:
    return promotion.smoke_test(p.endpoint.model_dump())


lambda_handler = smoke_test
