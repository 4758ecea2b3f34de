"""What the dashboard's endpoints share: JSON answers and their headers, and the checks of a task_id and a body."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ansible_worker.controller.payloads import finite
from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.topics import is_task_id

# How long an endpoint waits for the broker or the history store.
ACTION_WITHIN = 15.0
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def json_response(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(finite(data), status_code=status_code, headers=HEADERS)


def error_response(message: str, status_code: int) -> JSONResponse:
    return json_response({"error": message}, status_code)


def not_a_task_id(task_id: str | None) -> JSONResponse | None:
    """A 404 for a job name that is not a task_id, before it can reach a topic or filter.

    `+` or `#` in a record filter would read other jobs' records or make the broker library
    refuse the filter and drop the link; any page the user visits can ask for such a URL.
    """
    if task_id is None or is_task_id(task_id):
        return None
    return error_response("not a task_id: a task_id is 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-'", 404)


async def json_body(request: Request) -> dict[str, Any] | None:
    # No body at all is an empty object: an action without parameters.
    return json_object(await request.body() or b"{}", max_bytes=64 * 1024)


def sse(message: dict[str, Any]) -> str:
    return "data: " + json.dumps(finite(message), separators=(",", ":")) + "\n\n"
