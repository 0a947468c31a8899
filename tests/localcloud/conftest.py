"""Helpers for tests that drive the local cloud with the real template deployed (fixture `cloud`)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from localcloud.cloud import LocalCloud


def upload_dataset(cloud: LocalCloud, name: str | None = None, corrupt: bool = False) -> tuple[str, str]:
    """Upload a two-file dataset and its manifest (last, as users do); returns (bucket, manifest key)."""
    s3 = cloud.client("s3")
    bucket = cloud.deployment.physical["DataBucket"]
    name = name or f"ds-{uuid.uuid4().hex[:8]}"
    files = []
    for i in range(2):
        data = f"def f{i}():\n    return {i}\n".encode() * 10
        s3.put_object(Bucket=bucket, Key=f"datasets/{name}/part-{i}.txt", Body=data)
        size = len(data) + (1 if corrupt and i == 1 else 0)
        files.append({"path": f"part-{i}.txt", "size": size, "sha256": hashlib.sha256(data).hexdigest()})
    key = f"datasets/{name}/manifest.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"name": name, "files": files}))
    return bucket, key


def wait_for_execution_with_input(cloud: LocalCloud, machine: str, needle: str, timeout: float = 30) -> dict:
    """The execution of `machine` whose input mentions `needle`, once it has finished."""
    sfn = cloud.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in cloud.executions(machine):
            desc = sfn.describe_execution(executionArn=e["executionArn"])
            if needle in desc["input"] and desc["status"] != "RUNNING":
                return desc
        time.sleep(0.2)
    raise TimeoutError(f"no finished execution of {machine} with {needle!r} in its input after {timeout} s")
