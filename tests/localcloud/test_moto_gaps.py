"""Each moto gap the local cloud closes (localcloud/patches.py), shown still open in the pinned moto.

If one of these fails after a moto upgrade, moto's behaviour changed: re-check the matching patch (it may now
be unnecessary, or wrong) before changing the test. They run against the local cloud's own moto server (no
`mock_aws`, which would reset the shared state), calling the originals that the patches keep on the classes.
"""

from __future__ import annotations

import json
import uuid

import pytest

from localcloud import patches
from localcloud.cloud import ACCOUNT_ID, REGION

pytestmark = pytest.mark.slow


def test_moto_invokes_lambda_code_only_through_docker(cloud):
    import inspect

    from moto.awslambda.models import LambdaFunction

    source = inspect.getsource(LambdaFunction._localcloud_original_invoke_lambda)
    assert "docker_client.containers.run(" in source


def test_moto_rules_with_lambda_or_state_machine_targets_raise_not_implemented(cloud):
    from moto.events.models import Rule, events_backends

    events = cloud.client("events")
    name = f"gap-{uuid.uuid4().hex[:8]}"
    events.put_rule(Name=name, EventPattern=json.dumps({"source": [name]}))
    event = {"source": name, "detail-type": "x", "detail": {}, "ingestion-time": 0, "id": "1", "time": 0}
    event.update(region=REGION, resources=[], account=ACCOUNT_ID)
    for i, arn in enumerate(
        (
            f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:f",
            f"arn:aws:states:{REGION}:{ACCOUNT_ID}:stateMachine:m",
        )
    ):
        events.put_targets(Rule=name, Targets=[{"Id": str(i), "Arn": arn}])
        events.remove_targets(Rule=name, Ids=[str(1 - i)])
        rule = events_backends[ACCOUNT_ID][REGION].event_buses["default"].rules[name]
        with pytest.raises(NotImplementedError):
            Rule._localcloud_original_send_to_targets(rule, event)
    events.remove_targets(Rule=name, Ids=["1"])
    events.delete_rule(Name=name)


def test_moto_names_an_unnamed_execution_none_so_a_second_collides(cloud):
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend, stepfunctions_parser_backends

    sfn = cloud.client("stepfunctions")
    definition = json.dumps({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 2, "End": True}}})
    arn = sfn.create_state_machine(
        name=f"gap-{uuid.uuid4().hex[:8]}", definition=definition, roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/r"
    )["stateMachineArn"]
    backend = stepfunctions_parser_backends[ACCOUNT_ID][REGION]
    original = StepFunctionsParserBackend._localcloud_original_start_execution
    first = original(backend, arn, None, '{"a": 1}')
    assert first.name is None
    with pytest.raises(Exception, match="Already Exists"):
        original(backend, arn, None, '{"a": 2}')
    # with the patch, two unnamed starts are two executions with UUID names
    a = sfn.start_execution(stateMachineArn=arn, input='{"b": 1}')["executionArn"]
    b = sfn.start_execution(stateMachineArn=arn, input='{"b": 2}')["executionArn"]
    assert a != b and len(a.rsplit(":", 1)[1]) == 36


def test_moto_s3_events_carry_a_fixed_id_an_epoch_time_and_etag_as_eTag():
    import inspect

    from moto.events.utils import _BASE_EVENT_MESSAGE
    from moto.s3 import notifications

    assert '"eTag": key.etag' in inspect.getsource(notifications._send_event_bridge_message)
    assert _BASE_EVENT_MESSAGE["id"] == patches._BASE_S3_EVENT_ID
    s3_event = {**_BASE_EVENT_MESSAGE, "source": "aws.s3", "detail": {"object": {"key": "k", "eTag": "abc"}}}
    assert patches._normalise_event(s3_event)["detail"]["object"] == {"key": "k", "etag": "abc"}
    normalised = patches._normalise_event({**_BASE_EVENT_MESSAGE, "time": 1_700_000_000, "ingestion-time": 1})
    assert normalised["id"] != patches._BASE_S3_EVENT_ID
    assert normalised["time"] == "2023-11-14T22:13:20Z" and "ingestion-time" not in normalised


def test_moto_refuses_a_policy_document_without_version(cloud):
    iam = cloud.client("iam")
    name = f"gap-{uuid.uuid4().hex[:8]}"
    iam.create_role(
        RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
    )
    with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
        iam.put_role_policy(
            RoleName=name,
            PolicyName="p",
            PolicyDocument=json.dumps(
                {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
            ),
        )


def test_moto_cloudformation_ignores_definition_substitutions_and_hides_the_machine_from_execution(cloud):
    from moto.stepfunctions.models import stepfunctions_backends

    cfn = cloud.client("cloudformation")
    body = {"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": "${X}", "End": True}}}
    template = {
        "Resources": {
            "M": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "RoleArn": f"arn:aws:iam::{ACCOUNT_ID}:role/r",
                    "DefinitionString": json.dumps(body),
                    "DefinitionSubstitutions": {"X": "replaced"},
                },
            }
        }
    }
    stack = f"gap-{uuid.uuid4().hex[:8]}"
    cfn.create_stack(StackName=stack, TemplateBody=json.dumps(template))
    arn = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"][0]["PhysicalResourceId"]
    sfn = cloud.client("stepfunctions")
    with pytest.raises(sfn.exceptions.StateMachineDoesNotExist):
        sfn.describe_state_machine(stateMachineArn=arn)  # the executing backend never sees it
    machine = stepfunctions_backends[ACCOUNT_ID][REGION].describe_state_machine(arn)
    assert "${X}" in machine.definition


def test_moto_cloudformation_ignores_bucket_eventbridge_notifications(cloud):
    cfn = cloud.client("cloudformation")
    name = f"gap-{uuid.uuid4().hex[:8]}"
    template = {
        "Resources": {
            "B": {
                "Type": "AWS::S3::Bucket",
                "Properties": {
                    "BucketName": name,
                    "NotificationConfiguration": {"EventBridgeConfiguration": {"EventBridgeEnabled": True}},
                },
            }
        }
    }
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(template))
    config = cloud.client("s3").get_bucket_notification_configuration(Bucket=name)
    assert "EventBridgeConfiguration" not in config


def test_moto_model_package_approval_emits_no_event_and_drops_metadata(cloud):
    from moto.sagemaker.models import SageMakerModelBackend, sagemaker_backends

    sm = cloud.client("sagemaker")
    group = f"gap-{uuid.uuid4().hex[:8]}"
    sm.create_model_package_group(ModelPackageGroupName=group)
    spec = {
        "Containers": [{"Image": "local", "ModelDataUrl": "s3://b/models/run/model.tar.gz"}],
        "SupportedContentTypes": ["application/json"],
        "SupportedResponseMIMETypes": ["application/json"],
    }

    def package() -> str:
        return sm.create_model_package(
            ModelPackageGroupName=group,
            InferenceSpecification=spec,
            ModelApprovalStatus="PendingManualApproval",
            CustomerMetadataProperties={"run_id": "r1"},
        )["ModelPackageArn"]

    backend = sagemaker_backends[ACCOUNT_ID][REGION]
    first = package()
    seen = len(patches.PatchState.events)
    SageMakerModelBackend._localcloud_original_update_model_package(
        backend, first, "Approved", None, None, [], None
    )
    assert sm.describe_model_package(ModelPackageName=first).get("CustomerMetadataProperties") in (None, {})
    assert len(patches.PatchState.events) == seen  # no event

    second = package()
    sm.update_model_package(ModelPackageArn=second, ModelApprovalStatus="Approved")
    assert sm.describe_model_package(ModelPackageName=second)["CustomerMetadataProperties"] == {
        "run_id": "r1"
    }
    event = patches.PatchState.events[-1]["event"]
    assert event["detail-type"] == "SageMaker Model Package State Change"
    assert (
        event["detail"]["ModelApprovalStatus"] == "Approved" and event["detail"]["ModelPackageArn"] == second
    )


def test_moto_schedule_rules_match_every_event():
    from moto.events.models import EventPattern

    assert EventPattern.load(None).matches_event(
        {"source": "aws.s3", "detail-type": "Object Created", "detail": {}}
    )


def test_moto_reports_a_heartbeat_timeout_as_states_timeout():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task import StateTask
    from moto.stepfunctions.parser.asl.eval.callback.callback import HeartbeatTimeoutError

    patches.apply()

    class Task(StateTask):
        def _eval_execution(self, env):  # abstract in moto; the error mapping needs no parsed state
            pass

    from types import SimpleNamespace

    task = Task.__new__(Task)
    env = SimpleNamespace(next_state_name="Train", event_history_context=SimpleNamespace(source_event_id=1))
    original = StateTask._localcloud_original_from_error(task, env, HeartbeatTimeoutError())
    assert original.error_name.error_name == "States.Timeout"
    patched = StateTask._from_error(task, env, HeartbeatTimeoutError())
    assert patched.error_name.error_name == "States.HeartbeatTimeout"
