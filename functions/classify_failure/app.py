"""Recovery: what to do about a failure event - replace the node, wait for a reboot, relaunch, or ignore."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import recovery
from moe_control.observability import workflow_step


class ClassifyFailureInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: dict[str, Any]


@workflow_step(ClassifyFailureInput)
def classify_failure(p: ClassifyFailureInput) -> Any:
    return recovery.classify(p.event)


lambda_handler = classify_failure
