"""Promotion: the approved model package passes the gates (approval status, metrics)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import promotion
from moe_control.observability import workflow_step


class CheckGatesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: dict[str, Any]


@workflow_step(CheckGatesInput)
def check_gates(p: CheckGatesInput) -> Any:
    return promotion.check_gates(p.event)


lambda_handler = check_gates
