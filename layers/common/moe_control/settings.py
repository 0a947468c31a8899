"""Configuration from the environment the template gives each function; a missing variable is a named error."""

from __future__ import annotations

import os

from moe_control.errors import ConfigurationError


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigurationError(
            f"environment variable {name} is not set (template.yaml sets it for this function)"
        )
    return value


def env_int(name: str, default: int | None = None) -> int:
    raw = env(name, None if default is None else str(default))
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"environment variable {name}={raw!r} is not an integer") from None


def env_float(name: str, default: float | None = None) -> float:
    raw = env(name, None if default is None else str(default))
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"environment variable {name}={raw!r} is not a number") from None
