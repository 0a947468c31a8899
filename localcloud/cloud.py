"""The embedded local cloud: moto's server on 127.0.0.1 with its gaps closed, the template deployed onto it,
the API served over HTTP, and Lambda handlers run from their folders. One per process (moto's state is global).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from localcloud import patches
from localcloud.apigw import LocalRestApi
from localcloud.deployer import Deployer, Deployment
from localcloud.runtime import LambdaRuntime
from localcloud.template import load_samconfig, sam_transform

log = logging.getLogger("localcloud")

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "localcloud", "AWS_SECRET_ACCESS_KEY": "localcloud"}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class LocalCloudError(Exception):
    """The local cloud cannot start or deploy; the message says why."""


@dataclass
class Timings:
    server_s: float = 0.0
    transform_s: float = 0.0
    deploy_s: float = 0.0
    total_s: float = 0.0


@dataclass
class LocalCloud:
    """Start with `start()`, deploy with `deploy()`, stop with `stop()` (or use as a context manager)."""

    port: int = 0  # 0 = a free port
    state_dir: Path = field(default_factory=lambda: PROJECT_ROOT / ".localcloud")
    region: str = REGION

    def __post_init__(self) -> None:
        self._server = None
        self._thread: threading.Thread | None = None
        self.runtime: LambdaRuntime | None = None
        self.deployment: Deployment | None = None
        self.apis: dict[str, LocalRestApi] = {}
        self.timings = Timings()
        self._saved_env: dict[str, str | None] = {}

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalCloud:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        started = time.monotonic()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        # moto's ASL engine logs every failed state at ERROR; the execution's history and error say it once.
        logging.getLogger("moto.stepfunctions").setLevel(logging.CRITICAL)
        try:
            # make_server binds here, in this thread: a taken port is an error now, not a hung start.
            self._server = make_server(
                "127.0.0.1",
                self.port,
                DomainDispatcherApplication(create_backend_app),
                threaded=True,
                request_handler=MotoRequestHandler,
            )
        except (OSError, SystemExit) as exc:
            reason = getattr(exc, "strerror", None) or "address already in use"
            raise LocalCloudError(
                f"cannot start the local cloud on 127.0.0.1:{self.port}: {reason}"
            ) from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-server", daemon=True)
        self._thread.start()
        # Step Functions' own SDK clients inside moto call moto on MOTO_PORT; our clients use AWS_ENDPOINT_URL.
        self._set_env(
            MOTO_PORT=str(self.port),
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_DEFAULT_REGION=self.region,
            **CREDENTIALS,
        )
        requests.post(
            f"{self.endpoint}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        ).raise_for_status()
        patches.apply()
        log_dir = self.state_dir / "logs"
        self.runtime = LambdaRuntime(base_env=self.lambda_env(), log_dir=log_dir)
        patches.PatchState.runtime = self.runtime
        patches.PatchState.start_execution = self._start_execution
        self.timings.server_s = time.monotonic() - started
        return self

    def lambda_env(self) -> dict[str, str]:
        """The environment every local Lambda worker starts from (then the function's own variables)."""
        keep = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", "REDIS_URL")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update(CREDENTIALS)
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_REGION=self.region,
            AWS_DEFAULT_REGION=self.region,
            AWS_LAMBDA_RUNTIME_API="localcloud",
            # No X-Ray daemon here: Tracer is a no-op locally (in AWS it sends segments to the daemon).
            POWERTOOLS_TRACE_DISABLED="true",
            LOCALCLOUD="1",
            LOCALCLOUD_STATE_DIR=str(self.state_dir),
        )
        return env

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 2}),
        )

    def deploy(
        self,
        template: Path = PROJECT_ROOT / "template.yaml",
        samconfig: Path | None = None,
        profile: str = "local",
        stack_name: str | None = None,
        overrides: dict[str, str] | None = None,
    ) -> Deployment:
        if self.runtime is None:
            raise LocalCloudError("start() the local cloud before deploying")
        started = time.monotonic()
        samconfig = samconfig or template.parent / "samconfig.toml"
        params = load_samconfig(samconfig, profile)
        params.update(overrides or {})
        transformed = sam_transform(template, params)
        self.timings.transform_s = time.monotonic() - started
        deployer = Deployer(self.client, self.runtime, ACCOUNT_ID, self.region)
        name = stack_name or _stack_name(samconfig, profile)
        self.deployment = deployer.deploy(transformed, name)
        for lid, api in self.deployment.apis.items():
            local = LocalRestApi(api, self.runtime, ACCOUNT_ID, api_keys=self._api_keys())
            local.start()
            self.apis[lid] = local
            self.deployment.outputs.setdefault(f"{lid}LocalUrl", local.url)
        self.timings.deploy_s = time.monotonic() - started - self.timings.transform_s
        self.timings.total_s = self.timings.server_s + time.monotonic() - started
        return self.deployment

    def _api_keys(self) -> set[str]:
        try:
            keys = self.client("apigateway").get_api_keys(includeValues=True)["items"]
        except Exception:
            return set()
        return {k["value"] for k in keys if k.get("enabled", True)}

    def stop(self) -> None:
        for api in self.apis.values():
            api.stop()
        self.apis.clear()
        if self.runtime is not None:
            self.runtime.shutdown()
        patches.PatchState.runtime = None
        patches.PatchState.start_execution = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env.clear()

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def _set_env(self, **values: str) -> None:
        for k, v in values.items():
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def _start_execution(self, state_machine_arn: str, payload: str) -> str:
        return self.client("stepfunctions").start_execution(stateMachineArn=state_machine_arn, input=payload)[
            "executionArn"
        ]

    def wait_for_execution(self, execution_arn: str, timeout: float = 60) -> dict[str, Any]:
        """Poll until the execution leaves RUNNING; returns describe_execution's answer."""
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            desc = sfn.describe_execution(executionArn=execution_arn)
            if desc["status"] != "RUNNING":
                return desc
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_arn} still RUNNING after {timeout:.0f} s")
            time.sleep(0.1)

    def executions(self, state_machine_logical_id: str) -> list[dict[str, Any]]:
        arn = self.deployment.physical[state_machine_logical_id]
        return self.client("stepfunctions").list_executions(stateMachineArn=arn)["executions"]


def _stack_name(samconfig: Path, profile: str) -> str:
    import tomllib

    try:
        return tomllib.loads(samconfig.read_text())[profile]["deploy"]["parameters"]["stack_name"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "moe-on-aws-local"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
