"""Which endpoint serves traffic: the deployments table (DynamoDB), slot 'live' plus one item per endpoint."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from moe_control.aws import resource
from moe_control.errors import NoLiveEndpoint
from moe_control.runs import now
from moe_control.settings import env

LIVE = "live"


class Deployment(BaseModel):
    slot: str
    endpoint_id: str
    url: str | None = None
    model_package_arn: str
    run_id: str | None = None
    artifact_uri: str
    status: str = "CANDIDATE"  # CANDIDATE | LIVE | RETIRED | ROLLED_BACK
    updated_at: str = ""


def _table() -> Any:
    return resource("dynamodb").Table(env("DEPLOYMENTS_TABLE"))


def put(d: Deployment) -> Deployment:
    d = d.model_copy(update={"updated_at": now()})
    _table().put_item(Item=d.model_dump(exclude_none=True))
    return d


def get(slot: str) -> Deployment | None:
    item = _table().get_item(Key={"slot": slot}, ConsistentRead=True).get("Item")
    return Deployment.model_validate(item) if item else None


def live() -> Deployment:
    d = get(LIVE)
    if d is None:
        raise NoLiveEndpoint("no model is deployed yet: approve a registered model to deploy one")
    return d
