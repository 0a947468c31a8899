"""Bad input to the local cloud gets a clear message, and nothing hangs."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localcloud.cloud import PROJECT_ROOT, LocalCloud, LocalCloudError
from localcloud.deployer import DeployError
from localcloud.template import TemplateError, sam_transform


def test_a_port_already_taken_is_refused_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(LocalCloudError, match=f"127.0.0.1:{port}"):
            LocalCloud(port=port).start()
        assert time.monotonic() - started < 5


def test_moectl_local_up_on_a_taken_port_exits_2_with_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "moectl.cli", "local", "up", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2
    assert "cannot start the local cloud" in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_malformed_yaml_names_the_file(tmp_path: Path):
    bad = tmp_path / "template.yaml"
    bad.write_text("Resources:\n  A: [unclosed\n")
    with pytest.raises(TemplateError, match="not valid YAML"):
        sam_transform(bad)


def test_a_template_without_resources_is_refused(tmp_path: Path):
    bad = tmp_path / "template.yaml"
    bad.write_text("Description: nothing\n")
    with pytest.raises(TemplateError, match="no Resources"):
        sam_transform(bad)


def test_an_invalid_sam_resource_reports_the_transform_error(tmp_path: Path):
    bad = tmp_path / "template.yaml"
    bad.write_text(
        "Transform: AWS::Serverless-2016-10-31\nResources:\n  F:\n    Type: AWS::Serverless::Function\n"
        "    Properties:\n      Handler: app.h\n"
    )
    with pytest.raises(TemplateError, match="SAM transform failed"):
        sam_transform(bad)


def test_an_undeclared_parameter_override_is_refused():
    with pytest.raises(TemplateError, match="not declared.*Nope"):
        sam_transform(PROJECT_ROOT / "template.yaml", {"Nope": "1"})


def test_an_unknown_resource_type_is_reported_by_name(tmp_path: Path):
    tpl = tmp_path / "template.yaml"
    tpl.write_text(
        "Resources:\n  Queue:\n    Type: AWS::SQS::Queue\n"
        "  Cluster:\n    Type: AWS::Redshift::Cluster\n    Properties: {}\n"
    )
    with LocalCloud(state_dir=tmp_path / "state") as cloud:
        with pytest.raises(
            DeployError, match=r"cannot create these resources: Cluster \(AWS::Redshift::Cluster\)"
        ):
            cloud.deploy(template=tpl, samconfig=tmp_path / "none.toml", stack_name="unknown-type")


def test_a_handler_that_raises_reports_its_error_type_and_message(tmp_path: Path):
    code = tmp_path / "fn"
    code.mkdir()
    (code / "app.py").write_text(
        "class WorkerExploded(Exception):\n    pass\n\n"
        "def handler(event, context):\n    raise WorkerExploded('boom: ' + event['why'])\n"
    )
    (tmp_path / "template.yaml").write_text(
        "Transform: AWS::Serverless-2016-10-31\nResources:\n  Boom:\n    Type: AWS::Serverless::Function\n"
        "    Properties:\n      FunctionName: boom-fn\n      Runtime: python3.11\n      Handler: app.handler\n"
        "      CodeUri: fn/\n"
    )
    with LocalCloud(state_dir=tmp_path / "state") as cloud:
        cloud.deploy(template=tmp_path / "template.yaml", samconfig=tmp_path / "none.toml", stack_name="boom")
        r = cloud.client("lambda").invoke(FunctionName="boom-fn", Payload=json.dumps({"why": "testing"}))
        assert r["FunctionError"] == "Handled"
        payload = json.loads(r["Payload"].read())
        assert payload["errorType"] == "WorkerExploded" and payload["errorMessage"] == "boom: testing"
        # the worker survives a handler exception: a second call is answered by the same warm process
        r = cloud.client("lambda").invoke(FunctionName="boom-fn", Payload=json.dumps({"why": "again"}))
        assert json.loads(r["Payload"].read())["errorMessage"] == "boom: again"


def test_a_handler_that_runs_past_its_timeout_is_stopped(tmp_path: Path):
    code = tmp_path / "fn"
    code.mkdir()
    (code / "app.py").write_text("import time\n\ndef handler(event, context):\n    time.sleep(60)\n")
    (tmp_path / "template.yaml").write_text(
        "Transform: AWS::Serverless-2016-10-31\nResources:\n  Slow:\n    Type: AWS::Serverless::Function\n"
        "    Properties:\n      FunctionName: slow-fn\n      Runtime: python3.11\n      Handler: app.handler\n"
        "      CodeUri: fn/\n      Timeout: 1\n"
    )
    with LocalCloud(state_dir=tmp_path / "state") as cloud:
        cloud.deploy(template=tmp_path / "template.yaml", samconfig=tmp_path / "none.toml", stack_name="slow")
        started = time.monotonic()
        r = cloud.client("lambda").invoke(FunctionName="slow-fn", Payload=b"{}")
        assert time.monotonic() - started < 15
        assert json.loads(r["Payload"].read())["errorType"] == "Sandbox.Timedout"


@pytest.mark.slow
def test_an_event_that_matches_no_rule_is_logged(cloud, caplog):
    from localcloud import patches

    caplog.set_level(logging.WARNING, logger="localcloud")
    cloud.client("events").put_events(
        Entries=[{"Source": "typo.source", "DetailType": "Nothing", "Detail": json.dumps({"a": 1})}]
    )
    assert any(
        "matched no rule" in r.getMessage() and "typo.source" in r.getMessage() for r in caplog.records
    )
    assert patches.PatchState.events[-1]["rules"] == []
