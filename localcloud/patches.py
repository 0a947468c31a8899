"""Each gap of moto (pinned in pyproject.toml) that the template needs, closed in one place.

Every patch here has a test in tests/localcloud/test_moto_gaps.py that fails if moto's own behaviour under it
changes (for example, if a new moto implements the target itself), so a moto upgrade is a deliberate act.

1. Lambda: moto runs handler code only in Docker. `LambdaFunction._invoke_lambda`, the one path every invoke
   takes (API, Step Functions, EventBridge), runs the real handler from functions/ in a warm subprocess instead.
2. EventBridge: a rule whose target is a Lambda function or a state machine raises NotImplementedError in
   `Rule.send_to_targets` (an S3 event that meets such a rule is dropped in silence, and later rules are
   skipped). Lambda targets are invoked asynchronously and state machine targets start an execution, with the
   target's Input / InputPath / InputTransformer applied. Other targets keep moto's own delivery.
3. S3 events on EventBridge carry one fixed id and an epoch-number time for every event, and name the object's
   ETag `eTag`; EventBridge sends a unique id, an ISO-8601 time and `etag`. Delivered events get all three, so
   idempotency keys and parsers see real shapes.
4. Step Functions: `start_execution` without a name names it `None`, so a second unnamed start collides;
   an unnamed execution gets a UUID, as in AWS.
5. EventBridge: an event that matches no rule is accepted in silence (as in AWS); the local cloud records every
   event and the rules it matched, and logs a warning for one that matched none, so a typo is visible.
7. EventBridge: a schedule rule (ScheduleExpression, no EventPattern) matches every event in moto; in AWS it
   matches none (only its schedule fires it). Rules without a pattern are skipped for events.
8. Step Functions: a task whose heartbeat times out fails with States.Timeout in moto; AWS names it
   States.HeartbeatTimeout (which the training pipeline catches to report a lost worker).
6. SageMaker: a model package's approval status change emits no "SageMaker Model Package State Change" event
   (AWS sends one to the default bus), and UpdateModelPackage without CustomerMetadataProperties erases the
   package's metadata (AWS keeps it). The local cloud keeps the metadata and emits the event.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("localcloud")

_BASE_S3_EVENT_ID = "17793124-05d4-b198-2fde-7ededc63b103"


class PatchState:
    """What the patches need from the running local cloud; set by LocalCloud.start()."""

    runtime = None  # localcloud.runtime.LambdaRuntime
    start_execution: Callable[[str, str], str] | None = (
        None  # (state machine arn, input json) -> execution arn
    )
    events: deque = deque(maxlen=1000)  # (event, matched rule names) records, newest last
    applied = False
    _lock = threading.Lock()


def _normalise_event(event: dict[str, Any]) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event.pop("ingestion-time", None)
    if event.get("id") in (None, "", _BASE_S3_EVENT_ID):
        event["id"] = str(uuid.uuid4())
    obj = event.get("detail", {}).get("object") if event.get("source") == "aws.s3" else None
    if isinstance(obj, dict) and "eTag" in obj:
        obj["etag"] = obj.pop("eTag")
    when = event.get("time")
    if isinstance(when, (int, float)):
        event["time"] = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return event


def _target_input(target: dict[str, Any], event: dict[str, Any], transform_input: bool) -> Any:
    from jsonpath_ng.ext import parse as jsonpath
    from moto.events.utils import EventTemplateParser

    if "Input" in target:
        return json.loads(target["Input"])
    if "InputPath" in target:
        matches = jsonpath(target["InputPath"]).find(event)
        return matches[0].value if matches else None
    if "InputTransformer" in target and transform_input:
        transformer = target["InputTransformer"]
        parsed = EventTemplateParser.parse(
            input_template=transformer.get("InputTemplate"),
            input_paths_map=transformer.get("InputPathsMap", {}),
            event={**event, "ingestion-time": event.get("time")},
        )
        return parsed
    return event


def _deliver(kind: str, arn: str, payload: Any) -> None:
    try:
        if kind == "lambda":
            name = arn.split(":")[6]
            result = PatchState.runtime.invoke(name, payload)
            if result.errored:
                log.warning("EventBridge -> Lambda %s failed: %s", name, json.dumps(result.payload)[:500])
        else:
            execution = PatchState.start_execution(arn, json.dumps(payload))
            log.info("EventBridge -> started %s", execution)
    except Exception:  # delivery is asynchronous in AWS: a failure never reaches the sender
        log.exception("EventBridge delivery to %s failed", arn)


def apply() -> None:
    """Install the patches (idempotent). Must run in the process that hosts the moto server."""
    with PatchState._lock:
        if PatchState.applied:
            return
        _patch_lambda()
        _patch_rules()
        _patch_start_execution()
        _patch_model_package_events()
        _patch_heartbeat_timeout()
        PatchState.applied = True


def _patch_lambda() -> None:
    from moto.awslambda.models import LambdaFunction

    def _invoke_lambda(self: LambdaFunction, event: Any = None) -> tuple[str, bool, str]:
        runtime = PatchState.runtime
        if runtime is None or not runtime.registered(self.function_name):
            message = {
                "errorType": "ResourceNotFoundException",
                "errorMessage": f"function {self.function_name} has no local code registered",
            }
            return json.dumps(message), True, ""
        if isinstance(event, str):
            event = json.loads(event) if event else {}
        result = runtime.invoke(self.function_name, event if event is not None else {})
        return json.dumps(result.payload, default=str), result.errored, result.logs

    LambdaFunction._localcloud_original_invoke_lambda = LambdaFunction._invoke_lambda
    LambdaFunction._invoke_lambda = _invoke_lambda


def _patch_rules() -> None:
    from moto.events.models import Rule
    from moto.utilities.arns import parse_arn

    original = Rule.send_to_targets

    def send_to_targets(self: Rule, original_event: dict[str, Any], transform_input: bool = True) -> None:
        if not self.event_pattern._pattern or not self.event_pattern.matches_event(original_event):
            return
        event = _normalise_event(original_event)
        _record_match(original_event, self.name)
        moto_targets = []
        for target in self.targets:
            arn = parse_arn(target["Arn"])
            if arn.service == "lambda" or arn.service == "states":
                payload = _target_input(target, event, transform_input)
                kind = "lambda" if arn.service == "lambda" else "states"
                threading.Thread(target=_deliver, args=(kind, target["Arn"], payload), daemon=True).start()
            else:
                moto_targets.append(target)
        if moto_targets:
            rule = copy.copy(self)
            rule.targets = moto_targets
            original(rule, original_event, transform_input)

    Rule.send_to_targets = send_to_targets
    Rule._localcloud_original_send_to_targets = original

    from moto.events.models import EventsBackend

    original_put_events = EventsBackend.put_events

    def put_events(self: EventsBackend, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        _matches.names = []
        try:
            entries = original_put_events(self, events)
            matched = _matches.names
        finally:
            _matches.names = None
        if not matched:
            for e in events:
                log.warning(
                    "EventBridge: event source=%s detail-type=%s on bus %s matched no rule",
                    e.get("Source"),
                    e.get("DetailType"),
                    e.get("EventBusName") or "default",
                )
                detail = e.get("Detail")
                record = {
                    "source": e.get("Source"),
                    "detail-type": e.get("DetailType"),
                    "detail": json.loads(detail) if detail else {},
                    "resources": e.get("Resources", []),
                }
                PatchState.events.append({"event": record, "rules": []})
        return entries

    EventsBackend._localcloud_original_put_events = original_put_events
    EventsBackend.put_events = put_events


_matches = threading.local()


def _record_match(event: dict[str, Any], rule_name: str) -> None:
    PatchState.events.append({"event": event, "rules": [rule_name]})
    names = getattr(_matches, "names", None)
    if names is not None:
        names.append(rule_name)


def _patch_start_execution() -> None:
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original = StepFunctionsParserBackend.start_execution

    def start_execution(self, state_machine_arn, name=None, execution_input=None, trace_header=None):
        return original(self, state_machine_arn, name or str(uuid.uuid4()), execution_input, trace_header)

    StepFunctionsParserBackend._localcloud_original_start_execution = original
    StepFunctionsParserBackend.start_execution = start_execution


def _model_package_event(package: Any) -> dict[str, Any]:
    detail = {
        "ModelPackageGroupName": package.model_package_group_name,
        "ModelPackageVersion": package.model_package_version,
        "ModelPackageArn": package.arn,
        "ModelPackageStatus": "Completed",
        "ModelApprovalStatus": package.model_approval_status,
        "InferenceSpecification": package.inference_specification,
        "CustomerMetadataProperties": package.customer_metadata_properties,
    }
    return {
        "Source": "aws.sagemaker",
        "DetailType": "SageMaker Model Package State Change",
        "Detail": json.dumps(detail, default=str),
        "Resources": [package.arn],
    }


def _patch_model_package_events() -> None:
    from moto.events.models import events_backends
    from moto.sagemaker.models import SageMakerModelBackend

    original = SageMakerModelBackend.update_model_package

    def update_model_package(
        self,
        model_package_arn,
        model_approval_status,
        approval_description,
        customer_metadata_properties,
        customer_metadata_properties_to_remove,
        additional_inference_specifications_to_add,
    ):
        name = self.model_package_name_mapping.get(model_package_arn, model_package_arn)
        package = self.model_packages.get(name)
        before = package.model_approval_status if package else None
        if package is not None and customer_metadata_properties is None:
            customer_metadata_properties = package.customer_metadata_properties
        arn = original(
            self,
            model_package_arn,
            model_approval_status,
            approval_description,
            customer_metadata_properties,
            customer_metadata_properties_to_remove,
            additional_inference_specifications_to_add,
        )
        if package is not None and package.model_approval_status != before:
            events_backends[self.account_id][self.region_name].put_events([_model_package_event(package)])
        return arn

    SageMakerModelBackend._localcloud_original_update_model_package = original
    SageMakerModelBackend.update_model_package = update_model_package


def _patch_heartbeat_timeout() -> None:
    from moto.stepfunctions.parser.api import HistoryEventType, TaskTimedOutEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import FailureEvent
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task import StateTask
    from moto.stepfunctions.parser.asl.eval.callback.callback import HeartbeatTimeoutError
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

    original = StateTask._from_error

    def _from_error(self, env, ex):
        if isinstance(ex, HeartbeatTimeoutError):
            name = StatesErrorNameType.StatesHeartbeatTimeout
            return FailureEvent(
                env=env,
                error_name=StatesErrorName(typ=name),
                event_type=HistoryEventType.TaskTimedOut,
                event_details=EventDetails(
                    taskTimedOutEventDetails=TaskTimedOutEventDetails(error=name.to_name())
                ),
            )
        return original(self, env, ex)

    StateTask._localcloud_original_from_error = original
    StateTask._from_error = _from_error
