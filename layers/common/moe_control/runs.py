"""Training runs as records in the runs table (DynamoDB): one item per run, keyed by run_id."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from moe_control.aws import resource
from moe_control.errors import RunNotFound

RunStatus = Literal["VALIDATED", "TRAINING", "RECOVERING", "TRAINED", "REGISTERED", "FAILED"]


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
    error: str | None = None


def _table() -> Any:
    return resource("dynamodb").Table(os.environ["RUNS_TABLE"])


def _from_item(item: dict[str, Any]) -> Run:
    return Run.model_validate({k: int(v) if isinstance(v, Decimal) else v for k, v in item.items()})


def put_run(run: Run) -> Run:
    _table().put_item(Item=run.model_dump(exclude_none=True))
    return run


def get_run(run_id: str) -> Run:
    item = _table().get_item(Key={"run_id": run_id}).get("Item")
    if item is None:
        raise RunNotFound(f"no training run {run_id!r}")
    return _from_item(item)


def list_runs(limit: int = 100) -> list[Run]:
    items = _table().scan(Limit=limit).get("Items", [])
    return sorted((_from_item(i) for i in items), key=lambda r: r.created_at, reverse=True)
