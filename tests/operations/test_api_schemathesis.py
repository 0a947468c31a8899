"""schemathesis against the local cloud's API, as deployed from template.yaml: requests generated from
docs/openapi.json (examples, coverage, fuzzing and stateful phases; valid and invalid inputs; every HTTP
method) reach the API function through the local API Gateway with the deployment's API key, and a real
inference worker (`moectl serve` on a tiny model) is the live endpoint, so completions are answered for real.
Checks: no 5xx (not_a_server_error) and every answer matches the document (response_schema_conformance).

The run's figures (cases, failures) are printed and written to SCHEMATHESIS_REPORT_DIR when it is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import boto3
import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CORPUS = "def add(a, b):\n    return a + b\nThe quick brown fox jumps over the lazy dog.\n" * 50
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from moe_core.artifact import save_model
    from moe_core.config import ModelConfig
    from moe_core.data.tokenizer import train_tokenizer
    from moe_core.model import Transformer

    directory = tmp_path_factory.mktemp("tiny-model")
    train_tokenizer([CORPUS], vocab_size=400).save(str(directory / "tokenizer.json"))
    cfg = ModelConfig.from_preset("tiny", vocab_size=512, mtp_depth=0)
    torch.manual_seed(0)
    save_model(Transformer(cfg), cfg, directory)
    return directory


@pytest.fixture(scope="module")
def live_worker(cloud, tiny_artifact: Path) -> Iterator[str]:
    """`moectl serve` on the tiny model, recorded as the live endpoint in the deployed deployments table (as
    promotion's shift_traffic records it), its artifact in the deployed model bucket."""
    port = free_port()
    cmd = [sys.executable, "-m", "moectl.cli", "serve", "--model", str(tiny_artifact), "--port", str(port)]
    cmd += ["--model-name", "tiny", "--max-batch", "8"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "moectl serve exited"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "moectl serve did not become healthy within 90 s"
            time.sleep(0.2)
        d = cloud.deployment
        bucket = d.physical["ModelBucket"]
        s3 = cloud.client("s3")
        for f in sorted(tiny_artifact.iterdir()):
            s3.put_object(Bucket=bucket, Key=f"models/tiny/{f.name}", Body=f.read_bytes())
        _table(cloud, "DeploymentsTable").put_item(
            Item={
                "slot": "live",
                "endpoint_id": "moe-v1",
                "url": url,
                "model_package_arn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/moe-local-models/1",
                "artifact_uri": f"s3://{bucket}/models/tiny/",
                "status": "LIVE",
            }
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def seeded_run(cloud) -> str:
    """A trained run in the deployed runs table, as the pipeline records one: GET /training-jobs lists it and
    GET /training-jobs/{run_id} finds it, so their answers are checked against the document too."""
    from moe_control.runs import Run

    run = Run(
        run_id="schemathesis-0123456789",
        dataset="schemathesis",
        manifest_uri="s3://moe-local-data/datasets/schemathesis/manifest.json",
        status="TRAINED",
        files=2,
        total_bytes=4096,
        max_steps=30,
        training={"preset": "tiny", "max_steps": 30},
        cluster="moe-training",
        job_id="local-1",
        artifact_uri="s3://moe-local-models/models/schemathesis-0123456789/",
        task_token="never-shown",
        attempts=1,
        metrics={"final_loss": 2.5, "final_step": 30},
    )
    item = json.loads(run.model_dump_json(exclude_none=True), parse_float=Decimal)
    _table(cloud, "RunsTable").put_item(Item=item)
    return run.run_id


def _table(cloud, logical_id: str):
    return boto3.resource(
        "dynamodb",
        endpoint_url=cloud.endpoint,
        region_name=cloud.region,
        aws_access_key_id="localcloud",
        aws_secret_access_key="localcloud",
    ).Table(cloud.deployment.physical[logical_id])


def test_generated_requests_get_no_server_error_and_answers_of_the_documented_schemas(
    cloud, live_worker, seeded_run, tmp_path
):
    api = cloud.apis["ControlApi"]
    (key,) = api.api_keys
    served = httpx.post(
        f"{api.url}/v1/completions",
        json={"prompt": "def", "max_tokens": 2},
        headers={"x-api-key": key},
        timeout=60,
    )
    assert served.status_code == 200, served.text  # the live worker answers through the API
    report_dir = Path(os.environ.get("SCHEMATHESIS_REPORT_DIR") or tmp_path)
    # The seeded run's id as the path parameter: its lookup reaches the store and answers 200.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\nrun_id = "{seeded_run}"\n')
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run"]
    cmd += [str(REPO / "docs" / "openapi.json")]
    # The document's server is /v1 (the stage): the origin is the local API's host and port.
    cmd += ["--origin", api.url.rsplit("/", 1)[0], "--header", f"x-api-key: {key}"]
    cmd += ["--checks", "not_a_server_error,response_schema_conformance"]
    cmd += ["--max-examples", str(MAX_EXAMPLES), "--seed", "20261130", "--workers", "1"]
    cmd += ["--generation-with-security-parameters", "false", "--generation-database", "none"]
    cmd += ["--request-timeout", "60", "--no-color", "--report", "json,junit,har"]
    cmd += ["--report-dir", str(report_dir)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    summary = run.stdout[run.stdout.find("SUMMARY") :] if "SUMMARY" in run.stdout else run.stdout[-3000:]
    print(summary)
    (report_dir / "schemathesis-summary.txt").write_text(summary)
    report = json.loads(max(report_dir.glob("json-*.json")).read_text())
    cases = report["test_cases"]
    print(
        f"schemathesis: {cases['generated']} cases, {cases['with_failures']} with failures, phases {report['phases']}"
    )
    assert run.returncode == 0, run.stdout[-6000:]
    assert cases["with_failures"] == 0 and not report["errors"] and not report["failures"]
    assert cases["generated"] >= 8 * MAX_EXAMPLES // 2  # every operation was exercised, not skipped
    assert report["phases"]["coverage"]["status"] == report["phases"]["fuzzing"]["status"] == "success"
    # every exchange is in the HAR file: the seeded run was found, and its task token was never answered
    exchanges = max(report_dir.glob("har-*.json")).read_text()
    assert f"/training-jobs/{seeded_run}" in exchanges and "never-shown" not in exchanges
