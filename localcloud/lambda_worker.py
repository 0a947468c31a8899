"""One warm Lambda 'container': a subprocess that imports a handler once and serves invocations from its parent.

Protocol: the parent writes one JSON request per line on stdin; the worker answers one JSON line on the file
descriptor given in LOCALCLOUD_RESULT_FD. The handler's own stdout and stderr (Powertools logs, prints) go to the
function's log file, as in a real Lambda they go to CloudWatch Logs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from typing import Any


class LambdaContext:
    """The attributes of the real Lambda context object that handlers and Powertools read."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.invoked_function_arn = request["function_arn"]
        self.aws_request_id = request["request_id"]
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline = time.monotonic() + float(request["timeout"])
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _load_handler(code_dir: str, handler: str):
    module_path, _, func_name = handler.rpartition(".")
    file = os.path.join(code_dir, *module_path.split(".")) + ".py"
    if not os.path.isfile(file):
        raise ImportError(f"Unable to import module '{module_path}': no file {file}")
    sys.path.insert(0, code_dir)
    spec = importlib.util.spec_from_file_location(module_path, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_path] = module
    spec.loader.exec_module(module)
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise ImportError(f"Handler '{func_name}' missing on module '{module_path}'") from None


def _error(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "errorType": error_type or type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def main() -> None:
    result = os.fdopen(int(os.environ["LOCALCLOUD_RESULT_FD"]), "w", buffering=1)
    code_dir, handler_name = sys.argv[1], sys.argv[2]
    try:
        handler = _load_handler(code_dir, handler_name)
        init_error = None
    except Exception as exc:  # the real runtime reports import failures on every invoke
        traceback.print_exc()
        handler, init_error = None, _error(exc, "Runtime.ImportModuleError")
    result.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if init_error is not None:
            result.write(json.dumps({"ok": False, "payload": init_error}) + "\n")
            continue
        try:
            payload = handler(request["event"], LambdaContext(request))
            answer = {"ok": True, "payload": payload}
            text = json.dumps(answer, default=str)
        except Exception as exc:
            traceback.print_exc()
            text = json.dumps({"ok": False, "payload": _error(exc)})
        sys.stdout.flush()
        sys.stderr.flush()
        result.write(text + "\n")


if __name__ == "__main__":
    main()
