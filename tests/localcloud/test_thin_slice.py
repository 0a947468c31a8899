"""The thin slice, end to end on the local cloud with the real template: S3 upload -> EventBridge rule ->
start_workflow -> training_pipeline -> validate_dataset handler -> DynamoDB record -> GET /training-jobs over HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from localcloud.demo import api_call, get_run, upload_stdlib_dataset, wait_for

pytestmark = pytest.mark.slow


def test_an_uploaded_manifest_becomes_a_run_listed_over_http(cloud):
    name = f"slice-{uuid.uuid4().hex[:6]}"
    training = {
        "preset": "tiny",
        "max_steps": 1,
        "checkpoint_every": 1,
        "seq_len": 32,
        "batch_size": 2,
        "vocab_size": 300,
        "seed": 0,
    }
    key = upload_stdlib_dataset(cloud, name, training, max_bytes=20_000)
    bucket = cloud.deployment.physical["DataBucket"]

    def recorded():
        for e in cloud.executions("TrainingPipelineStateMachine"):
            if e["name"].startswith(name):
                return get_run(cloud, e["name"])
        return None

    run = wait_for("the run record", "slice", recorded, 60)
    assert run["manifest_uri"] == f"s3://{bucket}/{key}" and run["dataset"] == name
    status, body = api_call(cloud, "GET", "/training-jobs")
    assert status == 200 and run["run_id"] in [j["run_id"] for j in body["training_jobs"]]
    status, body = api_call(cloud, "GET", f"/training-jobs/{run['run_id']}")
    assert status == 200 and body["dataset"] == name and "task_token" not in body


def test_objects_outside_the_dataset_prefix_start_nothing(cloud):
    s3 = cloud.client("s3")
    bucket = cloud.deployment.physical["DataBucket"]
    before = len(cloud.executions("TrainingPipelineStateMachine"))
    s3.put_object(Bucket=bucket, Key="scratch/manifest.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="datasets/x/readme.txt", Body=b"not a manifest")
    time.sleep(1.0)
    assert len(cloud.executions("TrainingPipelineStateMachine")) == before


def test_the_api_wants_its_key_and_names_unknown_routes_and_runs(cloud):
    url = cloud.apis["ControlApi"].url
    try:
        urllib.request.urlopen(url + "/training-jobs", timeout=30)
        raise AssertionError("a request without x-api-key was answered")
    except urllib.error.HTTPError as e:
        assert e.code == 403 and json.loads(e.read())["message"] == "Forbidden"
    status, body = api_call(cloud, "GET", "/nope")
    assert status == 404 and "no route for GET /nope" in body["message"]
    status, body = api_call(cloud, "GET", "/training-jobs/does-not-exist")
    assert status == 404 and "does-not-exist" in json.dumps(body)
