"""Promotion: make the candidate live (and retire the old endpoint), or roll back to the old one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import promotion
from moe_control.observability import workflow_step


class ShiftTrafficInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = "shift"
    model: dict[str, Any] | None = None
    endpoint: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@workflow_step(ShiftTrafficInput)
def shift_traffic(p: ShiftTrafficInput) -> Any:
    if p.action == "rollback":
        return promotion.rollback(p.endpoint, p.error or {})
    if p.model is None or p.endpoint is None:
        raise ValueError("shift needs model and endpoint")
    return promotion.shift_traffic(p.model, p.endpoint)


lambda_handler = shift_traffic
