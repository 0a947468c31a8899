"""template.yaml's security and operations promises, read from the template itself: one KMS key behind every
store, TLS-only buckets, no IAM wildcard without its reason, dead letters for the events that start workflows,
the alarms and the topic they go to, and a written reason for every scanner check it skips."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.operations.lambda_helpers import REPO, LambdaContext, load_function

TEMPLATE = REPO / "template.yaml"


def _resources(template: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == rtype}


def _refers_to(value: Any, logical_id: str) -> bool:
    text = json.dumps(value)
    return f'"Ref": "{logical_id}"' in text or f'"Fn::GetAtt": ["{logical_id}"' in text


def test_every_bucket_table_queue_topic_and_log_group_is_encrypted_with_the_data_key(template):
    for lid, r in _resources(template, "AWS::S3::Bucket").items():
        rule = r["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms", lid
        assert _refers_to(rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"], "DataKey"), lid
    for lid, r in _resources(template, "AWS::DynamoDB::Table").items():
        sse = r["Properties"]["SSESpecification"]
        assert sse["SSEType"] == "KMS" and _refers_to(sse["KMSMasterKeyId"], "DataKey"), lid
    for rtype, key in [
        ("AWS::SQS::Queue", "KmsMasterKeyId"),
        ("AWS::SNS::Topic", "KmsMasterKeyId"),
        ("AWS::Logs::LogGroup", "KmsKeyId"),
    ]:
        found = _resources(template, rtype)
        assert found, rtype
        for lid, r in found.items():
            assert _refers_to(r["Properties"].get(key), "DataKey"), lid
    # Lambda environments and logs: through Globals, for every function.
    globals_ = template["Globals"]["Function"]
    assert _refers_to(globals_["KmsKeyArn"], "DataKey")
    assert _refers_to(globals_["LoggingConfig"]["LogGroup"], "FunctionLogGroup")
    key = template["Resources"]["DataKey"]["Properties"]
    assert key["EnableKeyRotation"] is True


def test_every_bucket_refuses_requests_without_tls(template):
    policies = _resources(template, "AWS::S3::BucketPolicy")
    for lid, bucket in _resources(template, "AWS::S3::Bucket").items():
        mine = [p for p in policies.values() if p["Properties"]["Bucket"] == {"Ref": lid}]
        assert len(mine) == 1, f"{lid} has no bucket policy"
        assert mine[0].get("Condition") == bucket.get("Condition"), lid
        statements = mine[0]["Properties"]["PolicyDocument"]["Statement"]
        deny = [
            s for s in statements if s["Effect"] == "Deny" and s["Principal"] == "*" and s["Action"] == "s3:*"
        ]
        assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}, lid
        assert json.dumps(deny[0]["Resource"]).count(lid) == 2, f"{lid}: the bucket and its objects"


def _iam_statements(transformed: dict[str, Any]):
    for lid, r in transformed["Resources"].items():
        props = r.get("Properties", {})
        if r["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                for s in policy["PolicyDocument"]["Statement"]:
                    yield lid, s
        elif r["Type"] == "AWS::IAM::ManagedPolicy":
            for s in props["PolicyDocument"]["Statement"]:
                yield lid, s


def test_no_iam_statement_allows_any_action_and_a_wildcard_resource_has_its_reason(transformed):
    text = TEMPLATE.read_text()
    statements = list(_iam_statements(transformed))
    assert len(statements) > 40  # every function's and state machine's policies are looked at
    for lid, s in statements:
        if s["Effect"] != "Allow":
            continue
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        assert not [a for a in actions if a == "*" or a.endswith(":*")], f"{lid}: {actions}"
        if s.get("Resource") == "*":
            # Only where AWS gives no narrower resource; template.yaml says why on the same line.
            assert s.get("Sid"), f"{lid}: an unnamed statement on Resource '*': {s}"
            block = text[text.index(f"Sid: {s['Sid']}") :]
            line = block[block.index("Resource:") :].splitlines()[0]
            assert re.match(r'Resource: "\*"\s+#\s*\S+', line), f"{lid} {s['Sid']}: no reason for '*': {line}"


def test_functions_and_state_machines_use_the_key_only_through_the_data_services(template):
    policy = template["Resources"]["KeyUsePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert len(policy) == 1 and "kms:ViaService" in policy[0]["Condition"]["StringEquals"]
    users = [
        lid
        for lid, r in template["Resources"].items()
        if r["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::StateMachine")
        and {"Ref": "KeyUsePolicy"} in r["Properties"].get("Policies", [])
    ]
    # every function that touches a table, bucket, queue or topic, and every workflow (it publishes alerts)
    touches = [
        lid
        for lid, r in template["Resources"].items()
        if r["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::StateMachine")
        and re.search(
            r"DynamoDB|S3(Read|Crud)|SNSPublish|SQS", json.dumps(r["Properties"].get("Policies", []))
        )
    ]
    assert touches and set(touches) <= set(users)


def test_scanner_skips_each_carry_a_reason(template):
    skips = [
        (lid, s)
        for lid, r in template["Resources"].items()
        for s in r.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for lid, s in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", s["id"]), (lid, s)
        assert len(s.get("comment", "")) >= 40, f"{lid} skips {s['id']} without a reason"


def test_events_that_start_workflows_dead_letter_to_the_queue(transformed):
    rules = _resources(transformed, "AWS::Events::Rule")
    assert len(rules) == 5
    for lid, r in rules.items():
        for target in r["Properties"]["Targets"]:
            assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}, lid
    start = transformed["Resources"]["StartWorkflowFunction"]["Properties"]
    assert start["DeadLetterConfig"]["TargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    queue_policy = _resources(transformed, "AWS::SQS::QueuePolicy")["DeadLetterQueuePolicy"]["Properties"]
    allow = [s for s in queue_policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert allow[0]["Principal"] == {"Service": "events.amazonaws.com"}


def test_alarms_cover_failed_executions_dead_letters_api_errors_latency_and_lost_heartbeats(template):
    alarms = _resources(template, "AWS::CloudWatch::Alarm")
    for lid, a in alarms.items():
        assert a["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}], lid
    watched = {
        (
            a["Properties"]["Namespace"],
            a["Properties"]["MetricName"],
            json.dumps(a["Properties"]["Dimensions"]),
        )
        for a in alarms.values()
    }
    machines = _resources(template, "AWS::Serverless::StateMachine")
    assert len(machines) == 4
    for machine in machines:
        dims = json.dumps([{"Name": "StateMachineArn", "Value": {"Ref": machine}}])
        assert ("AWS/States", "ExecutionsFailed", dims) in watched, machine
    assert any(ns == "AWS/SQS" and "DeadLetterQueue" in dims for ns, _, dims in watched)
    api = {m for ns, m, _ in watched if ns == "AWS/ApiGateway"}
    assert api == {"5XXError", "Latency"}
    latency = next(a for a in alarms.values() if a["Properties"]["MetricName"] == "Latency")
    assert latency["Properties"]["ExtendedStatistic"] == "p99"
    assert (
        "MoeOnAws",
        "TrainingHeartbeatsLost",
        json.dumps([{"Name": "service", "Value": "moe-control-plane"}]),
    ) in (watched)


def test_the_heartbeat_alarm_watches_the_metric_record_failure_emits(template, capsys, monkeypatch):
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", env["POWERTOOLS_SERVICE_NAME"])
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", env["POWERTOOLS_METRICS_NAMESPACE"])
    app = load_function("record_failure")
    error = {"Error": "States.HeartbeatTimeout", "Cause": "no heartbeat"}
    assert app.lambda_handler({"error": error}, LambdaContext())["error"].startswith(
        "States.HeartbeatTimeout"
    )
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    emitted = {
        (d["Namespace"], m["Name"], tuple(sorted((k, blob[k]) for k in dims)))
        for blob in blobs
        for d in blob["_aws"]["CloudWatchMetrics"]
        for m in d["Metrics"]
        for dims in d["Dimensions"]
    }
    alarm = template["Resources"]["TrainingHeartbeatLostAlarm"]["Properties"]
    dims = tuple(sorted((d["Name"], d["Value"]) for d in alarm["Dimensions"]))
    assert (alarm["Namespace"], alarm["MetricName"], dims) in emitted
    # any other failure counts nothing there
    app.lambda_handler({"error": {"Error": "DatasetRejected", "Cause": "x"}}, LambdaContext())
    assert "TrainingHeartbeatsLost" not in capsys.readouterr().out


def test_vpc_endpoints_and_the_trail_exist_only_when_asked_for(template):
    optional = {
        lid: r["Condition"]
        for lid, r in template["Resources"].items()
        if r["Type"] in ("AWS::EC2::VPCEndpoint", "AWS::CloudTrail::Trail")
    }
    services = sorted(
        r["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 2)[-2:][-1]
        if r["Type"] == "AWS::EC2::VPCEndpoint"
        else "trail"
        for r in (template["Resources"][lid] for lid in optional)
    )
    assert services == ["api", "dynamodb", "runtime", "s3", "states", "trail"]
    assert set(optional.values()) == {"CreateVpcEndpoints", "CreateCloudTrail"}
    params = template["Parameters"]
    assert (
        params["EnableVpcEndpoints"]["Default"] == "false"
        and params["EnableCloudTrail"]["Default"] == "false"
    )


CHECKOV = TEMPLATE.parent / ".venv-checkov" / "bin" / "checkov"


@pytest.mark.slow
@pytest.mark.skipif(not CHECKOV.exists(), reason="make lint installs checkov into .venv-checkov")
def test_checkov_passes_with_every_optional_resource_on(tmp_path):
    """checkov leaves out resources whose condition is false under the default parameters (the trail, the VPC
    endpoints, FSx): make lint scans the defaults, this scans a copy with every option on."""
    text = TEMPLATE.read_text()
    for name, value in {
        "EnableVpcEndpoints": '"true"',
        "EnableCloudTrail": '"true"',
        "VpcId": "vpc-0123456789abcdef0",
        "SubnetIds": "subnet-1,subnet-2",
        "SecurityGroupIds": "sg-1",
        "RouteTableIds": "rtb-1",
        "ClusterExecutionRoleArn": "arn:aws:iam::123456789012:role/cluster",
        "InferenceRoleArn": "arn:aws:iam::123456789012:role/inference",
    }.items():
        text, n = re.subn(
            rf"(\n  {name}:\n(?:    .*\n)*?    Default: ).*\n", rf"\g<1>{value}\n", text, count=1
        )
        assert n == 1, name
    copy = tmp_path / "template.yaml"
    copy.write_text(text)
    cmd = [str(CHECKOV), "-f", str(copy), "--framework", "cloudformation", "--skip-download", "-o", "json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = json.loads(run.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    scanned = {c["resource"] for c in report["results"]["passed_checks"]}
    assert {"AWS::CloudTrail::Trail.Trail", "AWS::S3::Bucket.TrailBucket"} <= scanned
