"""Launch (or, for recovery, relaunch) the training worker with the pipeline's task token."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from moe_control import pipeline, recovery
from moe_control.errors import MalformedEvent
from moe_control.observability import workflow_step


class LaunchTrainingInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    task_token: str | None = None
    checkpoint: dict[str, Any] | None = None
    action: str = "launch"


@workflow_step(LaunchTrainingInput)
def launch_training(p: LaunchTrainingInput) -> Any:
    if p.action == "relaunch":
        return recovery.relaunch(p.run_id, p.checkpoint or {})
    if not p.task_token:
        raise MalformedEvent("launch needs the task token ($$.Task.Token)")
    return pipeline.launch_training(p.run_id, p.task_token)


lambda_handler = launch_training
