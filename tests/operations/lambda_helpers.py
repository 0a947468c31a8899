"""Lambda handlers loaded from their folders as the runtime loads them (every function's file is app.py, so each
gets a module name of its own), and the context object the runtime passes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_function(name: str) -> ModuleType:
    """functions/NAME/app.py as module `fn_NAME` (the layer is importable: the project installs moe_control)."""
    module_name = f"fn_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "functions" / name / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    """What the Lambda runtime passes as `context` (Powertools reads these attributes)."""

    function_name = "moe-test-function"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:moe-test-function"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000
