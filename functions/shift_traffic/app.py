"""Promotion: make the candidate live (and retire the old endpoint), or roll back to the old one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import promotion
from moe_control.errors import MalformedEvent
from moe_control.events import parse_event
from moe_control.observability import workflow_step


class ShiftTrafficInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = "shift"
    model: promotion.ModelRef | None = None
    endpoint: dict[str, Any] | None = None  # {} in a rollback after a failed deploy: no candidate
    error: dict[str, Any] | None = None


@workflow_step(ShiftTrafficInput)
def shift_traffic(p: ShiftTrafficInput) -> Any:
    endpoint = parse_event(p.endpoint, promotion.EndpointRef).model_dump() if p.endpoint else None
    if p.action == "rollback":
        return promotion.rollback(endpoint, p.error or {})
    if p.model is None or endpoint is None:
        raise MalformedEvent("shift needs model and endpoint")
    return promotion.shift_traffic(p.model.model_dump(), endpoint)


lambda_handler = shift_traffic
