"""Turn pydantic validation errors into short lines a person can act on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

_SECRET_WORDS = ("password", "secret", "key", "token")


def describe_errors(exc: ValidationError) -> list[str]:
    """One `path: problem` line per error, without pydantic's URLs or secret values."""
    return [describe_error(error) for error in exc.errors()]


def describe_error(error: Mapping[str, Any]) -> str:
    """One `path: problem` line for one pydantic error; the input is shown only when short, plain and not a secret."""
    location = ".".join(str(part) for part in error["loc"]) or "<root>"
    kind = error["type"]
    if kind == "missing":
        return f"{location}: required key is missing"
    if kind == "extra_forbidden":
        return f"{location}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    shown = error.get("input")
    secret = any(word in location.lower() for word in _SECRET_WORDS)
    if kind != "value_error" and not secret and isinstance(shown, str | int | float | bool):
        text = repr(shown)
        message = f"{message} (got {text[:80]}{'...' if len(text) > 80 else ''})"
    return f"{location}: {message}"
