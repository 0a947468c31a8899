"""The control routes over HTTP through the local API Gateway: training jobs, model versions, auth, errors, and
the committed OpenAPI document."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.conftest import REPO, load_api_module, template_routes, upload_manifest


def _assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"} and err["message"]
    assert "Traceback" not in r.text
    if code is not None:
        assert err["code"] == code, err
    return err


# ------------------------------------------------------------------------------------------- auth and routing
def test_requests_without_the_api_key_are_forbidden(api_url, control_plane):
    assert httpx.get(f"{api_url}/training-jobs", timeout=10).status_code == 403
    r = httpx.get(f"{api_url}/training-jobs", headers={"x-api-key": "wrong"}, timeout=10)
    assert r.status_code == 403


def test_the_function_serves_exactly_the_template_routes(api_module):
    paths = json.loads(api_module.openapi_json())["paths"]
    documented = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert documented == set(template_routes())


def test_unknown_route_of_the_function_is_a_404_error_body(http, control_plane, api_module):
    # API Gateway only forwards the template's routes; the function still answers others with an error body.
    event = {
        "resource": "/nope",
        "path": "/nope",
        "httpMethod": "GET",
        "headers": {},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {"resourcePath": "/nope", "httpMethod": "GET", "path": "/v1/nope", "stage": "v1"},
        "body": None,
        "isBase64Encoded": False,
    }
    answer = api_module.app.resolve(event, None)
    assert answer["statusCode"] == 404
    assert json.loads(answer["body"])["error"]["code"] == "no_route"


# ------------------------------------------------------------------------------------------- training jobs
def test_starting_the_same_manifest_twice_is_one_run(http, control_plane):
    uri = upload_manifest(control_plane, "twice")
    first = http.post("/training-jobs", json={"dataset_uri": uri})
    assert first.status_code == 202, first.text
    second = http.post("/training-jobs", json={"dataset_uri": uri})
    assert second.status_code == 202, second.text
    a, b = first.json(), second.json()
    assert a["run_id"] == b["run_id"] and a["run_id"].startswith("twice-")
    assert (a["duplicate"], b["duplicate"]) == (False, True)
    assert a["execution_arn"] == b["execution_arn"]
    sfn = control_plane.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=control_plane.pipeline_arn)["executions"]
    assert [e["name"] for e in executions] == [a["run_id"]]
    started_with = json.loads(sfn.describe_execution(executionArn=a["execution_arn"])["input"])
    assert started_with["dataset_uri"] == uri and started_with["etag"]


def test_a_new_version_of_the_manifest_is_a_new_run(http, control_plane):
    uri = upload_manifest(control_plane, "again")
    first = http.post("/training-jobs", json={"dataset_uri": uri}).json()
    bucket, key = uri[5:].split("/", 1)
    control_plane.client("s3").put_object(Bucket=bucket, Key=key, Body=b'{"name": "again", "files": []}')
    second = http.post("/training-jobs", json={"dataset_uri": uri}).json()
    assert first["run_id"] != second["run_id"] and not second["duplicate"]


def test_run_id_is_the_one_the_upload_event_names(http, control_plane):
    """An API start and S3's own `Object Created` event (moto's, delivered through EventBridge to SQS) of the same
    manifest version name the same run, so the API cannot start a second run of an uploaded manifest."""
    from moe_control import workflows

    cp = control_plane
    sqs, events, s3 = cp.client("sqs"), cp.client("events"), cp.client("s3")
    queue = sqs.create_queue(QueueName=f"s3-events-{cp.data_bucket}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rule = f"uploads-{cp.data_bucket}"
    pattern = {"source": ["aws.s3"], "detail": {"bucket": {"name": [cp.data_bucket]}}}
    events.put_rule(Name=rule, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=rule, Targets=[{"Id": "q", "Arn": queue_arn}])
    s3.put_bucket_notification_configuration(
        Bucket=cp.data_bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    uri = upload_manifest(cp, "same-as-event")
    delivered = []
    for _ in range(10):
        for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            delivered.append(json.loads(m["Body"]))
        if any(e["detail"]["object"]["key"].endswith("manifest.json") for e in delivered):
            break
    event = next(e for e in delivered if e["detail"]["object"]["key"].endswith("manifest.json"))
    # moto 5.2.5 names the field `eTag`; S3's documented EventBridge event (and Powertools' model) has `etag`.
    obj = event["detail"]["object"]
    obj.setdefault("etag", obj.pop("eTag", None))
    assert obj["etag"]
    r = http.post("/training-jobs", json={"dataset_uri": uri})
    assert r.status_code == 202, r.text
    assert r.json()["run_id"] == workflows.route(event).name


@pytest.mark.parametrize(
    "body, code",
    [
        ({"dataset_uri": "http://example.com/manifest.json"}, "invalid_request"),
        ({"dataset_uri": 5}, "invalid_request"),
        ({"dataset_uri": "s3://bucket/datasets/a/manifest.json", "extra": 1}, "invalid_request"),
        ({}, "invalid_request"),
    ],
)
def test_a_bad_training_request_is_a_400_that_says_why(http, control_plane, body, code):
    err = _assert_error(http.post("/training-jobs", json=body), 400, code)
    assert err["type"] == "invalid_request_error"


def test_a_missing_manifest_or_bucket_is_a_404_naming_it(http, control_plane):
    for uri in (
        f"s3://{control_plane.data_bucket}/datasets/none/manifest.json",
        "s3://nope-bucket-x/datasets/a/manifest.json",
    ):
        err = _assert_error(http.post("/training-jobs", json={"dataset_uri": uri}), 404, "dataset_not_found")
        assert uri in err["message"] and err["type"] == "not_found_error"


def test_a_body_that_is_not_json_is_415(http, control_plane):
    r = http.post("/training-jobs", content=b"dataset", headers={"Content-Type": "text/plain"})
    _assert_error(r, 415, "unsupported_media_type")


def test_training_jobs_are_listed_and_shown_without_the_task_token(http, control_plane):
    from moe_control.runs import Run, put_run

    put_run(
        Run(run_id="r-1", dataset="d", manifest_uri="s3://b/k.json", status="TRAINING", task_token="SECRET")
    )
    put_run(Run(run_id="r-2", dataset="d", manifest_uri="s3://b/k.json", status="VALIDATED"))
    listed = http.get("/training-jobs").json()
    assert listed["count"] == 2 and {j["run_id"] for j in listed["training_jobs"]} == {"r-1", "r-2"}
    one = http.get("/training-jobs/r-1")
    assert one.status_code == 200 and one.json()["status"] == "TRAINING"
    assert "SECRET" not in one.text and "SECRET" not in http.get("/training-jobs").text
    assert "task_token" not in one.json()
    assert http.get("/training-jobs", params={"limit": 1}).json()["count"] == 1
    _assert_error(http.get("/training-jobs", params={"limit": 0}), 400, "invalid_request")


def test_an_unknown_run_is_a_404(http, control_plane):
    err = _assert_error(http.get("/training-jobs/does-not-exist"), 404, "run_not_found")
    assert "does-not-exist" in err["message"] and err["type"] == "not_found_error"


# ------------------------------------------------------------------------------------------- models
def _register(run_id: str) -> str:
    from moe_control import registry

    return registry.register_model(
        run_id, f"s3://models/{run_id}/", {"loss": 2.5}, "123456789012.dkr.ecr.us-east-1.amazonaws.com/moe:1"
    )


def test_models_are_listed_and_approving_one_changes_its_status(http, control_plane):
    _register("run-a")
    _register("run-b")
    listed = http.get("/models")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["count"] == 2 and [m["version"] for m in body["models"]] == [2, 1]
    assert {m["approval_status"] for m in body["models"]} == {"PendingManualApproval"}
    approved = http.post("/models/1/approve", json={"description": "looks good"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["approval_status"] == "Approved" and approved.json()["run_id"] == "run-a"
    pending = http.get("/models", params={"status": "PendingManualApproval"}).json()
    assert [m["version"] for m in pending["models"]] == [2]
    again = http.post("/models/1/approve")  # already approved: answered as it is
    assert again.status_code == 200 and again.json()["approval_status"] == "Approved"


def test_approving_an_unknown_or_malformed_model_id_is_a_clear_error(http, control_plane):
    _register("run-c")
    _assert_error(http.post("/models/7/approve"), 404, "model_not_found")
    _assert_error(http.post("/models/not-a-number/approve"), 400, "invalid_request")
    _assert_error(http.post("/models/1/approve", json={"bogus": True}), 400, "invalid_request")
    _assert_error(http.get("/models", params={"status": "Maybe"}), 400, "invalid_request")


# ------------------------------------------------------------------------------------------- the OpenAPI document
def test_the_committed_openapi_document_is_what_the_code_generates():
    committed = (REPO / "docs" / "openapi.json").read_text()
    generated = load_api_module().openapi_json()
    assert committed == generated, (
        "docs/openapi.json is stale: python functions/api/app.py > docs/openapi.json"
    )


def test_the_openapi_document_names_the_api_key_and_the_error_body():
    doc = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert doc["components"]["securitySchemes"]["api_key"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], (method, path)
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")):
                    body = "/GatewayMessage" if status == "403" else "/ErrorResponse"
                    assert resp["content"]["application/json"]["schema"]["$ref"].endswith(body), (
                        method,
                        path,
                    )
            assert "403" in op["responses"], (method, path)
