"""Hypothesis strategies for malformed events: any JSON value, and well-formed events with one part broken
(a field removed, retyped or replaced, or a field added) - the inputs that get furthest before they fail."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

# JSON as EventBridge, Step Functions and API Gateway deliver it (NaN is not JSON, but a Python caller can pass it).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["", "s3://", "s3://b/k.json", "Approved", "aws.s3", "Object Created", "*", "../.."])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

S3_UPLOAD = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "123456789012",
    "time": "2026-11-30T00:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:s3:::moe-data"],
    "detail": {
        "version": "0",
        "bucket": {"name": "moe-data"},
        "object": {
            "key": "datasets/tiny/manifest.json",
            "size": 120,
            "etag": "b1946ac92492d2347c6235b4d2611184",
        },
        "request-id": "57H08PA84AB1JZW0",
        "requester": "123456789012",
        "reason": "PutObject",
    },
}
NODE_HEALTH = {
    **{k: v for k, v in S3_UPLOAD.items() if k != "detail"},
    "detail-type": "SageMaker HyperPod Cluster Node Health Event",
    "source": "aws.sagemaker",
    "resources": [],
    "detail": {
        "ClusterArn": "arn:aws:sagemaker:us-east-1:123456789012:cluster/abc",
        "ClusterName": "moe-training",
        "InstanceId": "i-0123456789abcdef0",
        "HealthSummary": {
            "HealthStatus": "Unschedulable",
            "HealthStatusReason": "GPU XID 79",
            "RepairAction": "Replace",
        },
    },
}
WORKER_FAILED = {
    **{k: v for k, v in NODE_HEALTH.items() if k != "detail"},
    "detail-type": "Training Worker Failed",
    "source": "moe.training",
    "detail": {"run_id": "tiny-0123456789", "exit_code": 137, "error": "Training.Killed", "cause": "SIGKILL"},
}
MODEL_APPROVED = {
    **{k: v for k, v in NODE_HEALTH.items() if k != "detail"},
    "detail-type": "SageMaker Model Package State Change",
    "detail": {
        "ModelPackageGroupName": "moe-dev-models",
        "ModelPackageVersion": 3,
        "ModelPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/moe-dev-models/3",
        "ModelApprovalStatus": "Approved",
    },
}
SCHEDULED = {
    **{k: v for k, v in NODE_HEALTH.items() if k != "detail"},
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "detail": {},
}
API_START = {"dataset_uri": "s3://moe-data/datasets/tiny/manifest.json", "etag": "b1946ac9"}
VALID_EVENTS = [S3_UPLOAD, NODE_HEALTH, WORKER_FAILED, MODEL_APPROVED, SCHEDULED, API_START]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists (the root is the empty path)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def broken(draw: st.DrawFn, valid: Any) -> Any:
    """`valid` with one to three parts broken: removed, replaced by any JSON value, or a field added."""
    event = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(event) if p]
        if not paths:
            return draw(json_values)
        path = draw(st.sampled_from(paths))
        parent = event
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["remove", "replace", "add"]))
        if op == "remove":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(json_values)
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
    return event


malformed_events = json_values | st.sampled_from(VALID_EVENTS).flatmap(broken)
