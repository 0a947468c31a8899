"""Powertools Logger, Tracer and Metrics for every workflow step, and the one decorator that applies them.

A step handler is `@workflow_step(InputModel)` over a function of the parsed input: the event is parsed once at
the edge (a malformed one raises MalformedEvent, a named error the state machines catch), the run id becomes the
log correlation id, and each success counts one `StepSucceeded` metric (EMF) with the step's name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel

from moe_control.events import parse_event

logger = Logger()
tracer = Tracer()
metrics = Metrics()


def workflow_step(model: type[BaseModel]) -> Callable[[Callable[[Any], Any]], Callable[[dict, Any], Any]]:
    def wrap(fn: Callable[[Any], Any]) -> Callable[[dict, Any], Any]:
        @functools.wraps(fn)
        @logger.inject_lambda_context(clear_state=True)
        @tracer.capture_lambda_handler
        @metrics.log_metrics
        def handler(event: dict, context: Any) -> Any:
            payload = parse_event(event, model)
            run_id = getattr(payload, "run_id", None)
            if run_id:
                logger.set_correlation_id(run_id)
                tracer.put_annotation("run_id", run_id)
            result = fn(payload)
            metrics.add_dimension(name="step", value=fn.__name__)
            metrics.add_metric(name="StepSucceeded", unit=MetricUnit.Count, value=1)
            logger.info("step done", extra={"step": fn.__name__})
            return result

        return handler

    return wrap
