"""Property: the event edge of the control plane (the router and the event parsers) answers every malformed
event with a value or a named error (a ControlPlaneError), never KeyError, TypeError or a pydantic trace."""

from __future__ import annotations

import pytest
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from hypothesis import HealthCheck, given, settings

from moe_control import events as ev
from moe_control import workflows
from moe_control.errors import ControlPlaneError, MalformedEvent, UnknownEvent
from tests.fuzz.strategies import VALID_EVENTS, broken, malformed_events

MODELS = [
    ev.NodeHealthEvent,
    ev.WorkerFailedEvent,
    ev.ModelPackageStateEvent,
    ev.ScheduledEvent,
    ev.ApiTrainingRequest,
    S3EventNotificationEventBridgeModel,
]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_valid_events_route_to_their_workflows():
    """The seeds of the broken events are themselves valid, so breaking them tests the parsers past the envelope."""
    assert [workflows.route(e).workflow for e in VALID_EVENTS] == [
        "training_pipeline",
        "recovery",
        "recovery",
        "promotion",
        "cluster_lifecycle",
        "training_pipeline",
    ]


@FUZZ
@given(malformed_events)
def test_route_answers_a_workflow_start_or_a_named_error(event):
    try:
        start = workflows.route(event)
    except ControlPlaneError:
        return
    assert start.workflow in {"training_pipeline", "recovery", "promotion", "cluster_lifecycle"}
    assert 1 <= len(start.name) <= 80 and all(c.isalnum() or c in "-_" for c in start.name)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FUZZ
@given(malformed_events)
def test_parse_event_returns_the_model_or_raises_malformed_event(model, event):
    try:
        parsed = ev.parse_event(event, model)
    except MalformedEvent as exc:
        assert str(exc).startswith(f"not a {model.__name__}: ")
        return
    assert isinstance(parsed, model)


@FUZZ
@given(malformed_events)
def test_s3_object_returns_bucket_key_and_etag_or_raises_malformed_event(event):
    try:
        bucket, key, etag = ev.s3_object(event)
    except MalformedEvent:
        return
    assert isinstance(bucket, str) and isinstance(key, str) and isinstance(etag, str)


@FUZZ
@given(broken({"dataset_uri": "s3://moe-data/datasets/tiny/manifest.json"}))
def test_api_training_requests_outside_the_pattern_are_malformed(request):
    try:
        start = workflows.route(request)
    except (MalformedEvent, UnknownEvent):
        return
    assert start.workflow == "training_pipeline"
