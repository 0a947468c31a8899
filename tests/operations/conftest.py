"""Fixtures of the operations tests: template.yaml as written and as SAM transforms it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    from localcloud.template import load_yaml

    return load_yaml(TEMPLATE)


@pytest.fixture(scope="session")
def transformed() -> dict[str, Any]:
    """The CloudFormation that `sam deploy` would send, with the default (AWS) parameters."""
    from localcloud.template import sam_transform

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return sam_transform(TEMPLATE, {}).template
