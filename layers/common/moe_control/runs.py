"""Training runs as records in the runs table (DynamoDB): one item per run, keyed by run_id."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from moe_control.aws import resource
from moe_control.errors import RunNotFound
from moe_control.settings import env

RunStatus = Literal["VALIDATED", "STAGED", "TRAINING", "RECOVERING", "TRAINED", "REGISTERED", "FAILED"]


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def run_id_for(dataset: str, bucket: str, key: str, etag: str) -> str:
    """A stable id per uploaded manifest version: the same upload delivered twice names the same run."""
    digest = hashlib.sha256(f"{bucket}/{key}@{etag}".encode()).hexdigest()[:10]
    return f"{dataset}-{digest}"


class Run(BaseModel):
    run_id: str
    dataset: str
    manifest_uri: str
    status: RunStatus
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    files: int = 0
    total_bytes: int = 0
    preset: str = "tiny"
    max_steps: int = 0
    training: dict[str, Any] = Field(default_factory=dict)
    cluster: str | None = None
    job_id: str | None = None
    staged_uri: str | None = None
    checkpoint_uri: str | None = None
    artifact_uri: str | None = None
    task_token: str | None = Field(default=None, exclude=False, repr=False)
    attempts: int = 0
    resumed_from_step: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    model_package_arn: str | None = None
    error: str | None = None

    def public(self) -> dict[str, Any]:
        """What the API shows: never the task token (a credential for the workflow)."""
        return self.model_dump(exclude={"task_token"})


def _table() -> Any:
    return resource("dynamodb").Table(env("RUNS_TABLE"))


def _to_item(value: Any) -> Any:
    # DynamoDB takes Decimal, not float: round-trip through JSON.
    return json.loads(json.dumps(value), parse_float=Decimal)


def _from_item(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_item(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_item(v) for v in value]
    return value


def put_run(run: Run) -> Run:
    _table().put_item(Item=_to_item(run.model_dump(exclude_none=True)))
    return run


def get_run(run_id: str) -> Run:
    if not run_id or len(run_id.encode()) > 2048:  # DynamoDB refuses such a key outright
        raise RunNotFound(f"no training run {run_id[:100]!r}")
    item = _table().get_item(Key={"run_id": run_id}, ConsistentRead=True).get("Item")
    if item is None:
        raise RunNotFound(f"no training run {run_id!r}")
    return Run.model_validate(_from_item(item))


def update_run(run_id: str, **changes: Any) -> Run:
    """Read-modify-write of one run (the workflow is the only writer of a run, one step at a time)."""
    run = get_run(run_id).model_copy(update={**changes, "updated_at": now()})
    Run.model_validate(run.model_dump())  # a bad status or field type is refused before it is stored
    return put_run(run)


def list_runs(limit: int = 100) -> list[Run]:
    items = _table().scan(Limit=limit).get("Items", [])
    return sorted(
        (Run.model_validate(_from_item(i)) for i in items), key=lambda r: r.created_at, reverse=True
    )


def find_active_run(cluster: str | None = None) -> Run | None:
    """The newest run in TRAINING or RECOVERING (on `cluster`, if given): the one a node failure interrupts."""
    for run in list_runs(limit=1000):
        if run.status in ("TRAINING", "RECOVERING") and (cluster is None or run.cluster == cluster):
            return run
    return None
