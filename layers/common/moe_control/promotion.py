"""The promotion workflow's steps: gates, expert placement plan, deploy a candidate, smoke test, then shift
traffic to it - or roll back, leaving the live endpoint as it was."""

from __future__ import annotations

import json
import math
import posixpath
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError
from pydantic import BaseModel, ConfigDict, Field

from moe_control import deployments
from moe_control import events as ev
from moe_control.aws import client
from moe_control.checkpoints import parse_s3_uri
from moe_control.compute import get_backend
from moe_control.errors import DeploymentFailed, GateFailed, SmokeTestFailed
from moe_control.pipeline import headline_loss
from moe_control.settings import env_float


class ModelRef(BaseModel):
    """The model the promotion deploys, as check_gates answers it (the deploy and shift steps' input)."""

    model_config = ConfigDict(extra="allow")

    model_package_arn: str
    version: str = Field(min_length=1)
    artifact_uri: str = Field(min_length=1)
    run_id: str | None = None


class EndpointRef(BaseModel):
    """A candidate inference endpoint, as deploy answers it (the smoke test's and shift steps' input)."""

    model_config = ConfigDict(extra="allow")

    endpoint_id: str = Field(min_length=1)
    url: str | None = None


def check_gates(event: dict[str, Any]) -> dict[str, Any]:
    from moe_control.registry import get_model

    e = ev.parse_event(event, ev.ModelPackageStateEvent)
    model = get_model(e.detail.ModelPackageArn)
    if model.approval_status != "Approved":
        raise GateFailed(f"{e.detail.ModelPackageArn} is {model.approval_status}, not Approved")
    if not model.artifact_uri:
        raise GateFailed(f"{e.detail.ModelPackageArn} has no artifact")
    loss = headline_loss(model.metrics)
    limit = env_float("PROMOTION_MAX_LOSS", 1e9)
    if loss is None or not math.isfinite(loss) or loss > limit:
        raise GateFailed(
            f"{e.detail.ModelPackageArn}: loss {loss} does not pass the promotion gate ({limit})"
        )
    return {
        "model_package_arn": e.detail.ModelPackageArn,
        "version": e.detail.ModelPackageArn.rsplit("/", 1)[-1],
        "artifact_uri": model.artifact_uri,
        "run_id": model.run_id,
        "loss": loss,
    }


def plan_placement(artifact_uri: str) -> dict[str, Any]:
    """From routing_stats.json: the share of routed tokens each expert took, per layer, and the smallest
    fraction of experts per layer that covers EXPERT_COVERAGE of the traffic - the GPU budget to deploy with.
    The plan is written beside the artifact as placement.json (which experts start hot, layer by layer)."""
    s3 = client("s3")
    bucket, prefix = parse_s3_uri(artifact_uri)
    key = posixpath.join(prefix, "routing_stats.json")
    try:
        stats = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return {
            "placement_uri": None,
            "expert_budget": 1.0,
            "reason": "no routing_stats.json: all experts resident",
        }
    except (s3.exceptions.NoSuchBucket, ParamValidationError) as exc:
        raise DeploymentFailed(f"the model artifact {artifact_uri} cannot be read: {exc}") from None
    rows = _expert_counts(stats)
    coverage = env_float("EXPERT_COVERAGE", 0.9)
    hot: list[list[int]] = []
    needed = 0
    for row in rows:
        order = sorted(range(len(row)), key=lambda i: -row[i])
        total, acc, chosen = float(sum(row)) or 1.0, 0.0, []
        for i in order:
            chosen.append(i)
            acc += row[i]
            if acc / total >= coverage:
                break
        hot.append(chosen)
        needed = max(needed, len(chosen))
    n_experts = len(rows[0]) if rows else 1
    budget = max(0.25, needed / n_experts)
    plan = {"coverage": coverage, "expert_budget": budget, "hot_experts": hot}
    placement_key = posixpath.join(prefix, "placement.json")
    s3.put_object(Bucket=bucket, Key=placement_key, Body=json.dumps(plan).encode())
    return {"placement_uri": f"s3://{bucket}/{placement_key}", "expert_budget": budget}


def _expert_counts(stats: dict[str, Any]) -> list[list[float]]:
    """Tokens per expert, one row per routed layer, from the training worker's routing_stats.json
    (`{"layers": [{"router", "layer", "tokens_per_expert"}, ...]}`; the MTP block's router is left out)."""
    layers = stats.get("layers")
    if not isinstance(layers, list):
        raise GateFailed("routing_stats.json has no 'layers' list")
    rows = []
    for entry in layers:
        counts = entry.get("tokens_per_expert") if isinstance(entry, dict) else None
        if not isinstance(counts, list) or not all(isinstance(c, (int, float)) for c in counts):
            raise GateFailed(f"routing_stats.json: malformed layer entry {str(entry)[:120]}")
        if not str(entry.get("layer", "")).startswith("mtp"):
            rows.append([float(c) for c in counts])
    return rows


def deploy(model: dict[str, Any], placement: dict[str, Any]) -> dict[str, Any]:
    name = f"moe-v{model['version']}"
    try:
        endpoint = get_backend().deploy_inference(model["artifact_uri"], name, placement.get("placement_uri"))
    except Exception as exc:
        raise DeploymentFailed(f"{name}: {exc}") from exc
    deployments.put(
        deployments.Deployment(
            slot=f"endpoint#{endpoint.endpoint_id}",
            endpoint_id=endpoint.endpoint_id,
            url=endpoint.url,
            model_package_arn=model["model_package_arn"],
            run_id=model.get("run_id"),
            artifact_uri=model["artifact_uri"],
        )
    )
    return {"endpoint_id": endpoint.endpoint_id, "url": endpoint.url}


def smoke_test(endpoint: dict[str, Any]) -> dict[str, Any]:
    """One greedy completion: HTTP 200, a non-empty text, and completion tokens counted."""
    import urllib.error
    import urllib.request

    body = json.dumps({"prompt": "def main(", "max_tokens": 8, "temperature": 0}).encode()
    if endpoint.get("url"):
        req = urllib.request.Request(
            endpoint["url"] + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = json.loads(r.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise SmokeTestFailed(f"{endpoint['endpoint_id']}: {exc}") from None
    else:
        try:
            response = client("sagemaker-runtime").invoke_endpoint(
                EndpointName=endpoint["endpoint_id"], ContentType="application/json", Body=body
            )
            answer = json.loads(response["Body"].read())
        except (ClientError, ParamValidationError) as exc:
            raise SmokeTestFailed(f"{endpoint['endpoint_id']}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise SmokeTestFailed(f"{endpoint['endpoint_id']}: the answer is not JSON: {exc}") from None
    try:
        text = answer["choices"][0]["text"]
        tokens = answer["usage"]["completion_tokens"]
    except (KeyError, IndexError, TypeError):
        raise SmokeTestFailed(f"{endpoint['endpoint_id']}: not a completion: {str(answer)[:300]}") from None
    if tokens < 1:
        raise SmokeTestFailed(f"{endpoint['endpoint_id']}: no tokens generated")
    return {"text": text, "completion_tokens": tokens}


def shift_traffic(model: dict[str, Any], endpoint: dict[str, Any]) -> dict[str, Any]:
    previous = deployments.get(deployments.LIVE)
    deployments.put(
        deployments.Deployment(
            slot=deployments.LIVE,
            endpoint_id=endpoint["endpoint_id"],
            url=endpoint.get("url"),
            model_package_arn=model["model_package_arn"],
            run_id=model.get("run_id"),
            artifact_uri=model["artifact_uri"],
            status="LIVE",
        )
    )
    retired = None
    if previous is not None and previous.endpoint_id != endpoint["endpoint_id"]:
        get_backend().stop_inference(previous.endpoint_id)
        retired = previous.endpoint_id
    return {"live": endpoint["endpoint_id"], "retired": retired}


def rollback(endpoint: dict[str, Any] | None, error: dict[str, Any]) -> dict[str, Any]:
    if endpoint and endpoint.get("endpoint_id"):
        get_backend().stop_inference(endpoint["endpoint_id"])
    live = deployments.get(deployments.LIVE)
    return {
        "rolled_back": (endpoint or {}).get("endpoint_id"),
        "live": live.endpoint_id if live else None,
        "error": error.get("Error"),
    }
