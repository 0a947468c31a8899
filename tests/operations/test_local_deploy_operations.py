"""The security and operations resources as the local cloud deploys them from template.yaml: the key behind the
stores, the dead-letter queue with its policy, the alarms on the alert topic - and the one local difference, the
TLS-only bucket statements, which a plain-HTTP local S3 would otherwise enforce against every request."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.slow


def test_stores_are_encrypted_with_the_data_key(cloud):
    d = cloud.deployment
    key_arn = cloud.client("kms").describe_key(KeyId=d.physical["DataKey"])["KeyMetadata"]["Arn"]
    s3 = cloud.client("s3")
    for bucket in ("DataBucket", "CheckpointBucket", "ModelBucket", "ExpertBucket"):
        rule = s3.get_bucket_encryption(Bucket=d.physical[bucket])["ServerSideEncryptionConfiguration"][
            "Rules"
        ][0]
        assert rule["ApplyServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": key_arn,
        }
    queue = cloud.client("sqs").get_queue_attributes(
        QueueUrl=d.physical["DeadLetterQueue"], AttributeNames=["All"]
    )
    assert queue["Attributes"]["KmsMasterKeyId"] == d.physical["DataKey"]
    assert cloud.client("kms").list_aliases(KeyId=d.physical["DataKey"])["Aliases"][0]["AliasName"] == (
        "alias/moe-local-data"
    )


def test_the_dead_letter_queue_takes_events_from_eventbridge_only(cloud):
    d = cloud.deployment
    attrs = cloud.client("sqs").get_queue_attributes(
        QueueUrl=d.physical["DeadLetterQueue"], AttributeNames=["Policy"]
    )
    statements = json.loads(attrs["Attributes"]["Policy"])["Statement"]
    allow = [s for s in statements if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allow] == [{"Service": "events.amazonaws.com"}]
    assert allow[0]["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}


def test_alarms_notify_the_alert_topic(cloud):
    d = cloud.deployment
    topic = d.physical["AlertTopic"]
    alarms = cloud.client("cloudwatch").describe_alarms(AlarmNamePrefix="moe-local-")["MetricAlarms"]
    by_name = {a["AlarmName"]: a for a in alarms}
    assert set(by_name) == {
        "moe-local-training-pipeline-failed",
        "moe-local-recovery-failed",
        "moe-local-promotion-failed",
        "moe-local-cluster-lifecycle-failed",
        "moe-local-dead-letters",
        "moe-local-api-5xx",
        "moe-local-api-p99-latency",
        "moe-local-training-heartbeat-lost",
    }
    assert all(a["AlarmActions"] == [topic] for a in alarms)
    failed = by_name["moe-local-training-pipeline-failed"]
    assert failed["Dimensions"] == [
        {"Name": "StateMachineArn", "Value": d.physical["TrainingPipelineStateMachine"]}
    ]
    assert by_name["moe-local-api-p99-latency"]["ExtendedStatistic"] == "p99"


def test_tls_only_bucket_statements_are_left_out_locally_and_plain_http_works(cloud):
    s3 = cloud.client("s3")
    bucket = cloud.deployment.physical["DataBucket"]
    with pytest.raises(ClientError) as raised:
        s3.get_bucket_policy(Bucket=bucket)
    assert raised.value.response["Error"]["Code"] == "NoSuchBucketPolicy"
    s3.put_object(Bucket=bucket, Key="ops-check.txt", Body=b"over plain HTTP")
    assert s3.get_object(Bucket=bucket, Key="ops-check.txt")["Body"].read() == b"over plain HTTP"


def test_moto_enforces_a_tls_only_bucket_policy_against_plain_http(cloud):
    """Why the deployer leaves the statement out: moto evaluates a bucket policy's Deny, and the local cloud is
    plain HTTP (aws:SecureTransport is false for every request)."""
    s3 = cloud.client("s3")
    bucket = "ops-tls-only-probe"
    s3.create_bucket(Bucket=bucket)
    deny = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(deny))
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket=bucket, Key="x", Body=b"x")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_the_deployer_keeps_every_other_bucket_policy_statement():
    from localcloud.deployer import _denies_plain_http

    tls = {"Effect": "Deny", "Principal": "*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    assert _denies_plain_http(tls)
    assert not _denies_plain_http({**tls, "Effect": "Allow"})
    assert not _denies_plain_http(
        {"Effect": "Deny", "Condition": {"StringEquals": {"aws:SourceAccount": "1"}}}
    )
    assert not _denies_plain_http({"Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"}})
