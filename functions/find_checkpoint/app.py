"""Recovery: the newest complete checkpoint of a run (manifest present, every file with its size)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import recovery
from moe_control.observability import workflow_step


class FindCheckpointInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str


@workflow_step(FindCheckpointInput)
def find_checkpoint(p: FindCheckpointInput) -> Any:
    return recovery.find_checkpoint(p.run_id)


lambda_handler = find_checkpoint
