"""Reporting to the Step Functions task that launched this run: heartbeats, then success or a named failure.

The pipeline waits on a `.waitForTaskToken` task (HyperPod has no `.sync` integration), so the worker itself
releases it. Without a task token every method here does nothing, so local runs need no AWS at all.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

log = logging.getLogger("moe_core.train")
_CAUSE_LIMIT = 32768  # Step Functions' limit on `cause`


class TaskReporter:
    def __init__(self, task_token: str | None, heartbeat_seconds: float = 60.0, client: Any = None):
        self.task_token = task_token
        self.heartbeat_seconds = heartbeat_seconds
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeats_sent = 0
        self.finished = False

    @property
    def client(self) -> Any:
        if self._client is None:
            from moe_control.aws import client

            self._client = client("stepfunctions")
        return self._client

    def start_heartbeats(self) -> None:
        if not self.task_token or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="sfn-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.send_task_heartbeat(taskToken=self.task_token)
                self.heartbeats_sent += 1
            except Exception as e:  # a missed heartbeat must never kill the training itself
                log.warning("task heartbeat failed: %s", self._redacted(e))
            self._stop.wait(self.heartbeat_seconds)

    def _redacted(self, error: Exception) -> str:
        """The error's text without the task token (a credential for the workflow), should AWS echo it."""
        return str(error).replace(self.task_token, "<task-token>") if self.task_token else str(error)

    def stop_heartbeats(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def success(self, output: dict) -> None:
        self.stop_heartbeats()
        if self.task_token and not self.finished:
            self.client.send_task_success(taskToken=self.task_token, output=json.dumps(output))
            self.finished = True

    def failure(self, error: str, cause: str) -> None:
        self.stop_heartbeats()
        if self.task_token and not self.finished:
            try:
                self.client.send_task_failure(
                    taskToken=self.task_token, error=error, cause=cause[:_CAUSE_LIMIT]
                )
                self.finished = True
            except Exception as e:
                log.error("could not report failure %s to Step Functions: %s", error, self._redacted(e))
