"""The first thin slice, end to end on the local cloud with the real template: S3 upload -> EventBridge rule ->
training_pipeline state machine -> validate_dataset handler -> DynamoDB record -> GET /training-jobs over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.localcloud.conftest import upload_dataset, wait_for_execution_with_input

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_uploaded_manifest_runs_the_pipeline_and_the_run_is_listed_over_http(cloud):
    bucket, key = upload_dataset(cloud)
    execution = wait_for_execution_with_input(cloud, "TrainingPipelineStateMachine", key)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    run = json.loads(execution["output"])["run"]
    assert (
        run["manifest_uri"] == f"s3://{bucket}/{key}" and run["status"] == "VALIDATED" and run["files"] == 2
    )

    table = cloud.client("dynamodb")
    item = table.get_item(
        TableName=cloud.deployment.physical["RunsTable"], Key={"run_id": {"S": run["run_id"]}}
    )
    assert item["Item"]["dataset"]["S"] == run["dataset"]

    api = cloud.apis["ControlApi"].url
    status, body = _get(f"{api}/training-jobs")
    assert status == 200 and run["run_id"] in [j["run_id"] for j in body["training_jobs"]]
    status, body = _get(f"{api}/training-jobs/{run['run_id']}")
    assert status == 200 and body["dataset"] == run["dataset"]


def test_a_manifest_whose_files_do_not_match_fails_with_a_named_error(cloud):
    _, key = upload_dataset(cloud, corrupt=True)
    execution = wait_for_execution_with_input(cloud, "TrainingPipelineStateMachine", key)
    assert execution["status"] == "FAILED"
    assert execution["error"] == "DatasetRejected"
    assert "part-1.txt: size" in execution["cause"]


def test_objects_outside_the_dataset_prefix_start_nothing(cloud):
    s3 = cloud.client("s3")
    bucket = cloud.deployment.physical["DataBucket"]
    before = len(cloud.executions("TrainingPipelineStateMachine"))
    s3.put_object(Bucket=bucket, Key="scratch/manifest.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="datasets/x/readme.txt", Body=b"not a manifest")
    import time

    time.sleep(1.0)
    assert len(cloud.executions("TrainingPipelineStateMachine")) == before


def test_unknown_route_and_unknown_run_answer_404_with_a_message(cloud):
    api = cloud.apis["ControlApi"].url
    status, body = _get(f"{api}/nope")
    assert status == 404 and "no route for GET /nope" in body["message"]
    status, body = _get(f"{api}/training-jobs/does-not-exist")
    assert status == 404 and "does-not-exist" in body["message"]
