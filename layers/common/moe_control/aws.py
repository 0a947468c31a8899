"""The one place boto3 clients are made, so tests and the local cloud set the endpoint by environment alone.

boto3 reads AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>) itself; nothing here special-cases the local cloud.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60)


@functools.cache
def _client(service: str, region: str | None, endpoint: str | None) -> Any:
    return boto3.session.Session().client(service, region_name=region, config=_CONFIG)


def client(service: str) -> Any:
    """A cached boto3 client for `service`, keyed by region and endpoint so a changed environment gets a new one."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _client(service, region, os.environ.get("AWS_ENDPOINT_URL"))


@functools.cache
def _resource(service: str, region: str | None, endpoint: str | None) -> Any:
    return boto3.session.Session().resource(service, region_name=region, config=_CONFIG)


def resource(service: str) -> Any:
    """A cached boto3 resource (a new session costs ~0.1 s: once per process, not per request)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _resource(service, region, os.environ.get("AWS_ENDPOINT_URL"))
