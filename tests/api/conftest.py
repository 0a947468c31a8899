"""Fixtures of the API tests: the API function behind the local cloud's real API Gateway server, on a real moto
server (DynamoDB, S3, Step Functions, SageMaker registry) and, where named, a real Redis and a real worker.

The local API (localcloud.apigw.LocalRestApi) turns each HTTP request into the proxy event and requires the API
key, exactly as on the local cloud; the one stand-in is the Lambda runtime: the handler runs in this process
(so each test sets the function's environment with monkeypatch) instead of in a runtime subprocess.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-api-key"
CORPUS = (
    "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n"
    "The quick brown fox jumps over the lazy dog. Hello, world! Serving a mixture of experts model.\n"
    "import os\nimport sys\nfor i in range(10):\n    print(i * i)\n"
) * 40


def load_api_module() -> ModuleType:
    """functions/api/app.py as a module of its own name (every function's file is called app.py)."""
    spec = importlib.util.spec_from_file_location("api_function_app", REPO / "functions" / "api" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["api_function_app"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def api_module() -> ModuleType:
    from moe_control.observability import metrics

    # The template gives every function POWERTOOLS_METRICS_NAMESPACE; Metrics reads it when first imported,
    # which in a test session may be before any test set it.
    metrics.namespace = metrics.namespace or "MoeOnAwsTest"
    return load_api_module()


@dataclass
class _Context:
    function_name: str = "moe-test-api"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:moe-test-api"
    aws_request_id: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


class InProcessRuntime:
    """Stands in for localcloud.runtime.LambdaRuntime: runs the API handler in this process."""

    def __init__(self, handler: Any):
        self.handler = handler

    def invoke(self, name: str, event: Any) -> Any:
        from localcloud.runtime import InvokeResult

        context = _Context(aws_request_id=str(uuid.uuid4()))
        try:
            # The payload crosses a JSON boundary in Lambda too.
            return InvokeResult(json.loads(json.dumps(self.handler(event, context))), False, "")
        except Exception as exc:
            return InvokeResult({"errorType": type(exc).__name__, "errorMessage": str(exc)}, True, "")


def template_routes() -> list[tuple[str, str]]:
    """(method, path) of every API event of ApiFunction in template.yaml."""
    from localcloud.template import load_yaml

    events = load_yaml(REPO / "template.yaml")["Resources"]["ApiFunction"]["Properties"]["Events"]
    return [(e["Properties"]["Method"].upper(), e["Properties"]["Path"]) for e in events.values()]


@pytest.fixture(scope="session")
def api_url(api_module: ModuleType) -> Iterator[str]:
    """The local API Gateway serving template.yaml's routes (API key required) in front of the handler."""
    from localcloud.apigw import LocalRestApi
    from localcloud.deployer import RestApi, Route

    routes = template_routes()
    rest = RestApi(
        logical_id="ControlApi",
        api_id="testapi",
        stage="v1",
        routes=[Route(method, path, "moe-test-api") for method, path in routes],
        api_key_required=set(routes),
    )
    server = LocalRestApi(rest, InProcessRuntime(api_module.lambda_handler), "123456789012", {API_KEY})
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"x-api-key": API_KEY}, timeout=60) as c:
        yield c


def aws(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


@dataclass
class ControlPlane:
    endpoint: str
    runs_table: str
    deployments_table: str
    data_bucket: str
    model_bucket: str
    pipeline_arn: str
    group: str

    def client(self, service: str) -> Any:
        return aws(service, self.endpoint)


@pytest.fixture
def control_plane(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> ControlPlane:
    """Fresh tables, buckets, a training pipeline state machine and a model package group on moto, named per
    test, with the function's environment pointing at them (REDIS_URL empty: no response cache)."""
    from moe_control import preprocess

    tag = uuid.uuid4().hex[:8]
    ddb = aws("dynamodb", s3_endpoint)
    runs_table, deployments_table = f"runs-{tag}", f"deployments-{tag}"
    for name, key in ((runs_table, "run_id"), (deployments_table, "slot")):
        ddb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    s3 = aws("s3", s3_endpoint)
    data_bucket, model_bucket = f"data-{tag}", f"models-{tag}"
    for bucket in (data_bucket, model_bucket):
        s3.create_bucket(Bucket=bucket)
    definition = {"StartAt": "Validate", "States": {"Validate": {"Type": "Pass", "End": True}}}
    pipeline = aws("stepfunctions", s3_endpoint).create_state_machine(
        name=f"pipeline-{tag}",
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/pipeline",
    )["stateMachineArn"]
    group = f"models-{tag}"
    for name, value in {
        "RUNS_TABLE": runs_table,
        "DEPLOYMENTS_TABLE": deployments_table,
        "TRAINING_PIPELINE_ARN": pipeline,
        "MODEL_PACKAGE_GROUP": group,
        "REDIS_URL": "",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "MoeOnAwsTest",
        "POWERTOOLS_SERVICE_NAME": "moe-test-api",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("MAX_PROMPT_TOKENS", "MAX_OUTPUT_TOKENS", "RESPONSE_CACHE_TTL", "WORKER_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    preprocess.clear_tokenizer_cache()
    return ControlPlane(
        s3_endpoint, runs_table, deployments_table, data_bucket, model_bucket, pipeline, group
    )


# ------------------------------------------------------------------------------------------- model artifacts
@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE with the worker's special tokens, trained on a few KB (no torch)."""
    from moe_core.data.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer([CORPUS], vocab_size=400).save(str(path))
    return path


def upload_folder(cp: ControlPlane, folder: Path, prefix: str) -> str:
    s3 = cp.client("s3")
    for f in sorted(folder.iterdir()):
        if f.is_file():
            s3.put_object(Bucket=cp.model_bucket, Key=f"{prefix}/{f.name}", Body=f.read_bytes())
    return f"s3://{cp.model_bucket}/{prefix}/"


def make_live(cp: ControlPlane, artifact_uri: str, url: str | None, endpoint_id: str = "moe-v1") -> None:
    """Record `url` as the live endpoint serving `artifact_uri`, as promotion's shift_traffic does."""
    from moe_control import deployments

    deployments.put(
        deployments.Deployment(
            slot=deployments.LIVE,
            endpoint_id=endpoint_id,
            url=url,
            model_package_arn=f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{cp.group}/1",
            artifact_uri=artifact_uri,
            status="LIVE",
        )
    )


@pytest.fixture
def tokenizer_only_artifact(control_plane: ControlPlane, tokenizer_json: Path) -> str:
    """An artifact folder in S3 with only tokenizer.json: enough for every check made before the worker."""
    s3 = control_plane.client("s3")
    s3.put_object(
        Bucket=control_plane.model_bucket, Key="tok-only/tokenizer.json", Body=tokenizer_json.read_bytes()
    )
    return f"s3://{control_plane.model_bucket}/tok-only/"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_json: Path) -> Path:
    """config.json + model.safetensors (tiny preset, seeded random init) + tokenizer.json."""
    import torch

    from moe_core.artifact import save_model
    from moe_core.config import ModelConfig
    from moe_core.model import Transformer

    directory = tmp_path_factory.mktemp("tiny-model")
    (directory / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    cfg = ModelConfig.from_preset("tiny", vocab_size=512, mtp_depth=0)
    torch.manual_seed(0)
    save_model(Transformer(cfg), cfg, directory)
    return directory


@pytest.fixture(scope="session")
def worker_url(tiny_model_dir: Path) -> Iterator[str]:
    """`moectl serve` over the tiny artifact, in its own process, on a free port."""
    port = free_port()
    cmd = [sys.executable, "-m", "moectl.cli", "serve", "--model", str(tiny_model_dir), "--port", str(port)]
    cmd += ["--max-output-tokens", "64", "--model-name", "tiny"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"moectl serve exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("moectl serve did not become healthy within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def upload_manifest(cp: ControlPlane, name: str) -> str:
    """A dataset (one file) and its manifest in the data bucket; returns the manifest's s3:// URI."""
    s3 = cp.client("s3")
    data = b"def f():\n    return 1\n" * 20
    s3.put_object(Bucket=cp.data_bucket, Key=f"datasets/{name}/part-0.txt", Body=data)
    manifest = {
        "name": name,
        "files": [{"path": "part-0.txt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
    }
    key = f"datasets/{name}/manifest.json"
    s3.put_object(Bucket=cp.data_bucket, Key=key, Body=json.dumps(manifest).encode())
    return f"s3://{cp.data_bucket}/{key}"


# ------------------------------------------------------------------------------------------- a stand-in worker
class StubWorker:
    """A tiny HTTP server standing in for the inference worker where a test needs a worker to misbehave on
    purpose (429, 4xx, 5xx, a hang, a cut stream) or to count the requests that reach it. Tests of what a real
    worker answers use `worker_url` (moectl serve) instead. Its answers have the worker's shapes."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        self.mode = "ok"
        self.status = 200
        self.error = {"message": "", "type": "invalid_request_error", "code": None}
        self.delay_s = 0.0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body})
                status, content_type, data = stub.answer(body)
                if stub.delay_s:
                    time.sleep(stub.delay_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, body: dict) -> tuple[int, str, bytes]:
        if self.status != 200:
            return self.status, "application/json", json.dumps({"error": self.error}).encode()
        n = len(self.requests)
        usage = {
            "prompt_tokens": len(body["prompt"]),
            "completion_tokens": 2,
            "total_tokens": len(body["prompt"]) + 2,
        }
        base = {
            "id": f"cmpl-{n:04d}",
            "object": "text_completion",
            "created": 1700000000 + n,
            "model": "stub",
        }
        if not body.get("stream"):
            choice = {"index": 0, "text": f"answer {n}", "logprobs": None, "finish_reason": "length"}
            return 200, "application/json", json.dumps({**base, "choices": [choice], "usage": usage}).encode()
        chunks = [
            {**base, "choices": [{"index": 0, "text": "answer", "logprobs": None, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "text": f" {n}", "logprobs": None, "finish_reason": None}]},
            {
                **base,
                "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
                "usage": usage,
            },
        ]
        events = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
        if self.mode != "cut_stream":
            events += b"data: [DONE]\n\n"
        return 200, "text/event-stream", events

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_worker() -> Iterator[StubWorker]:
    stub = StubWorker()
    yield stub
    stub.close()


@pytest.fixture
def live_stub(
    control_plane: ControlPlane, tokenizer_only_artifact: str, stub_worker: StubWorker
) -> StubWorker:
    """The stand-in worker recorded as the live endpoint of an artifact that has the real tokenizer."""
    make_live(control_plane, tokenizer_only_artifact, stub_worker.url)
    return stub_worker
