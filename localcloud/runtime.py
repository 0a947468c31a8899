"""The local Lambda runtime: real handler code from functions/, run in warm subprocesses, one pool per function.

moto can only run Lambda code in Docker; the local cloud registers each deployed function here and moto's
invoke path (patched in localcloud.patches) calls `LambdaRuntime.invoke`. Each warm worker is a Python
subprocess with the function's code folder and its layers on sys.path and the function's environment, as a
Lambda container has. A handler that runs past its timeout has its worker killed, as Lambda does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FunctionSpec:
    """What the runtime needs to run one function; built by the deployer from the template."""

    name: str
    arn: str
    code_dir: Path
    handler: str
    layer_dirs: list[Path] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    timeout: float = 3.0
    memory_mb: int = 128


@dataclass
class InvokeResult:
    payload: Any
    errored: bool
    logs: str


class _Worker:
    def __init__(self, spec: FunctionSpec, base_env: dict[str, str], log_dir: Path) -> None:
        self.spec = spec
        read_fd, write_fd = os.pipe()
        env = {**base_env, **spec.environment}
        paths = [str(p) for p in spec.layer_dirs] + [env.get("PYTHONPATH", "")]
        env.update(
            PYTHONPATH=os.pathsep.join(p for p in paths if p),
            LOCALCLOUD_RESULT_FD=str(write_fd),
            AWS_LAMBDA_FUNCTION_NAME=spec.name,
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(spec.memory_mb),
            AWS_LAMBDA_FUNCTION_TIMEOUT=str(int(spec.timeout)),
            AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{spec.name}",
            PYTHONUNBUFFERED="1",
        )
        self.log_path = log_dir / f"{spec.name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localcloud.lambda_worker", str(spec.code_dir), spec.handler],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=(write_fd,),
            text=True,
        )
        os.close(write_fd)
        self._results = os.fdopen(read_fd, "r")
        self._ready = False

    def _read_line(self, deadline: float) -> str | None:
        """Read one result line, or None if the deadline passes or the worker dies."""
        import select

        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._results], [], [], min(remaining, 0.5))
            if ready:
                line = self._results.readline()
                return line or None
            if self.proc.poll() is not None:
                return None

    def invoke(self, event: Any, request_id: str) -> InvokeResult:
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + self.spec.timeout
        if not self._ready:
            # The first invoke pays the cold start (imports); Lambda's init phase has its own 10 s budget.
            if self._read_line(time.monotonic() + 10 + self.spec.timeout) is None:
                self.kill()
                return self._failure("Runtime.ExitError", "the function's runtime exited during init", start)
            self._ready = True
            deadline = time.monotonic() + self.spec.timeout
        request = {"event": event, "request_id": request_id, "function_arn": self.spec.arn}
        request["timeout"] = self.spec.timeout
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            return self._failure("Runtime.ExitError", "the function's runtime exited", start)
        line = self._read_line(deadline)
        if line is None:
            timed_out = self.proc.poll() is None
            self.kill()
            if timed_out:
                message = f"Task timed out after {self.spec.timeout:.2f} seconds"
                return self._failure("Sandbox.Timedout", message, start)
            return self._failure("Runtime.ExitError", "the function's runtime exited unexpectedly", start)
        answer = json.loads(line)
        return InvokeResult(answer["payload"], not answer["ok"], self._logs_since(start))

    def _logs_since(self, start: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read()[-4096:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _failure(self, error_type: str, message: str, start: int) -> InvokeResult:
        return InvokeResult({"errorType": error_type, "errorMessage": message}, True, self._logs_since(start))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self._results):
            try:
                stream.close()
            except OSError:
                pass
        self._log.close()


class LambdaRuntime:
    """Registered functions and their warm workers; thread-safe, one invocation per worker at a time."""

    def __init__(self, base_env: dict[str, str], log_dir: Path) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self._specs: dict[str, FunctionSpec] = {}
        self._idle: dict[str, list[_Worker]] = {}
        self._all: list[_Worker] = []
        self._lock = threading.Lock()

    def register(self, spec: FunctionSpec) -> None:
        with self._lock:
            self._specs[spec.name] = spec
            self._idle.setdefault(spec.name, [])

    def registered(self, name: str) -> bool:
        return name in self._specs

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def warm(self, name: str) -> None:
        """Start a worker ahead of the first call, so it imports while other work goes on."""
        with self._lock:
            worker = _Worker(self._specs[name], self.base_env, self.log_dir)
            self._all.append(worker)
            self._idle[name].append(worker)

    def invoke(self, name: str, event: Any) -> InvokeResult:
        with self._lock:
            spec = self._specs.get(name)
            if spec is None:
                raise KeyError(f"function {name!r} is not deployed on the local cloud")
            idle = self._idle[name]
            worker = None
            while idle:
                candidate = idle.pop()
                if candidate.alive:
                    worker = candidate
                    break
            if worker is None:
                worker = _Worker(spec, self.base_env, self.log_dir)
                self._all.append(worker)
        result = worker.invoke(event, str(uuid.uuid4()))
        with self._lock:
            if worker not in self._all:
                worker.kill()  # the runtime shut down while this invocation ran
            elif worker.alive:
                self._idle[name].append(worker)
            else:
                self._all.remove(worker)
        return result

    def shutdown(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
            self._idle = {name: [] for name in self._specs}
        for worker in workers:
            worker.kill()
