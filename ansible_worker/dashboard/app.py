"""The dashboard's ASGI app: the page, its live stream of changes, and the cancel and run-again endpoints."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ansible_worker.controller.client import Client, ClientError, NoWorkerAnswered, default_requester
from ansible_worker.controller.payloads import finite
from ansible_worker.controller.relaunch import RelaunchError, failed_hosts, not_ours, relaunch_request, too_old
from ansible_worker.dashboard.access import ACTION_HEADER, TOKEN_HEADER, is_loopback, same_origin, token_ok
from ansible_worker.dashboard.store import Store
from ansible_worker.mqtt.link import LinkError
from ansible_worker.protocol.topics import is_task_id

STATIC = Path(__file__).parent / "static"
# A comment line this often keeps proxies and the browser from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
ACTION_WITHIN = 15.0
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def _json(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(finite(data), status_code=status_code, headers=_HEADERS)


def _error(message: str, status_code: int) -> JSONResponse:
    return _json({"error": message}, status_code)


def _not_a_task_id(task_id: str | None) -> JSONResponse | None:
    """A 404 for a job name that is not a task_id, before it can reach a topic or filter.

    `+` or `#` in a record filter would read other jobs' records or make the broker library
    refuse the filter and drop the link; any page the user visits can ask for such a URL.
    """
    if task_id is None or is_task_id(task_id):
        return None
    return _error("not a task_id: a task_id is 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-'", 404)


class Dashboard:
    """The app's state: the store it shows, the client its actions go through, and who may use it."""

    def __init__(
        self,
        store: Store,
        client: Client,
        *,
        token: str | None,
        allow_actions: bool,
        listen_host: str,
        max_task_age: float = 300,
        max_clock_skew: float = 60,
    ) -> None:
        self.store = store
        self.client = client
        self.token = token
        self.allow_actions = allow_actions
        self.listen_host = listen_host
        self.max_task_age = max_task_age
        self.max_clock_skew = max_clock_skew

    def app(self) -> Starlette:
        """The ASGI app."""
        return Starlette(
            routes=[
                Route("/", self.index),
                Route("/api/config", self.config),
                Route("/api/stream", self.stream),
                Route("/api/jobs/{task_id}/record", self.record),
                Route("/api/jobs/{task_id}/cancel", self.cancel, methods=["POST"]),
                Route("/api/jobs/{task_id}/rerun", self.rerun, methods=["POST"]),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ]
        )

    def _host_ok(self, request: Request) -> bool:
        # Without a token, only loopback names: a rebound DNS name must not reach the data.
        if self.token is not None:
            return True
        host = (request.url.hostname or "").strip("[]")
        return is_loopback(host) or host == self.listen_host

    def _refused(self, request: Request, *, action: bool) -> Response | None:
        if not self._host_ok(request):
            return _error("unknown Host header", 403)
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token")
        if not token_ok(self.token, given):
            return _error("a valid dashboard token is required", 401)
        if not action:
            return None
        if not self.allow_actions:
            return _error("actions are off: start the dashboard with --allow-actions", 403)
        if request.headers.get(ACTION_HEADER) != "1" or not same_origin(
            request.headers.get("origin"), request.headers.get("host")
        ):
            return _error("cross-site request refused", 403)
        if self.token is not None and not token_ok(self.token, request.headers.get(TOKEN_HEADER)):
            return _error("a valid dashboard token header is required", 401)
        return None

    async def index(self, request: Request) -> Response:
        """The page.

        Cancellation: a file read, ended with the request.
        """
        if not self._host_ok(request):
            return _error("unknown Host header", 403)
        return FileResponse(STATIC / "index.html", headers=_HEADERS)

    async def config(self, request: Request) -> Response:
        """What the page needs before it asks for anything: whether a token is needed, and actions.

        Cancellation: answers at once.
        """
        if not self._host_ok(request):
            return _error("unknown Host header", 403)
        return _json({"token_required": self.token is not None, "allow_actions": self.allow_actions})

    async def stream(self, request: Request) -> Response:
        """Server-Sent Events: a snapshot, then every change (and the lines of `?job=`).

        Cancellation: the stream ends when the browser goes away or the server shuts down.
        """
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        job = request.query_params.get("job") or None
        if (bad := _not_a_task_id(job)) is not None:
            return bad
        headers = {**_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(self._events(job), media_type="text/event-stream", headers=headers)

    async def _events(self, job: str | None) -> AsyncIterator[str]:
        with self.store.listen(job) as (first, receive):
            yield _sse(first)
            while True:
                message = None
                with trio.move_on_after(KEEPALIVE_SECONDS):
                    message = await receive.receive()
                yield ": keepalive\n\n" if message is None else _sse(message)

    async def record(self, request: Request) -> Response:
        """A finished job's record, or 404 while the group publishes none.

        Cancellation: bounded by ACTION_WITHIN.
        """
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := _not_a_task_id(task_id)) is not None:
            return bad
        with trio.move_on_after(ACTION_WITHIN):
            # A record that cannot be read counts as none (the client has said why).
            with suppress(ClientError):
                found = await self.client.record(task_id)
                if found is not None:
                    # Its request's extra_vars may hold secrets: the page never gets them.
                    return _json({key: value for key, value in found.items() if key != "request"})
        return _error("no record of this job", 404)

    async def cancel(self, request: Request) -> Response:
        """Ask the group to cancel a queued or running job, with the reason given.

        Cancellation: bounded by ACTION_WITHIN; a cancel request already published stays published.
        """
        refused = self._refused(request, action=True)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := _not_a_task_id(task_id)) is not None:
            return bad
        status = self.store.jobs.get(task_id)
        if status is None or status.get("state") not in ("queued", "running"):
            return _error(f"job {task_id} is not queued or running", 409)
        body = await _body(request)
        if body is None:
            return _error("the body must be a JSON object", 400)
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1024):
            return _error("reason must be a text of at most 1024 characters", 400)
        requested_by = f"dashboard {default_requester()}"[:128]
        try:
            with trio.fail_after(ACTION_WITHIN):
                await self.client.cancel(task_id, reason=reason or None, requested_by=requested_by)
        except (trio.TooSlowError, LinkError, ClientError) as exc:
            return _error(f"could not reach the broker: {exc or 'timed out'}", 503)
        return _json({"task_id": task_id, "requested": "cancel"}, 202)

    async def rerun(self, request: Request) -> Response:
        """Submit a finished job's request again under a new task_id; with `{"failed": true}`, on its failed hosts.

        The failed hosts come from the job's record; the request, as for a whole run again,
        from what this dashboard heard.

        Cancellation: bounded by ACTION_WITHIN (the client's own answer bound is shorter).
        """
        refused = self._refused(request, action=True)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := _not_a_task_id(task_id)) is not None:
            return bad
        status = self.store.jobs.get(task_id)
        original = self.store.requests.get(task_id)
        if status is None or status.get("state") in ("queued", "running"):
            return _error(f"job {task_id} has not finished", 409)
        if status.get("refused"):
            return _error(f"job {task_id} was refused, not run: it is not run again", 409)
        if original is None:
            return _error(
                f"the request of job {task_id} was published before this dashboard started, or is no longer kept",
                409,
            )
        refusal = not_ours(original, self.client, key="this dashboard's key")
        if refusal is not None:
            return _error(f"job {task_id}: {refusal}", 409)
        heard = self.store.heard_at.get(task_id)
        old = too_old(
            original,
            self.client,
            heard=heard,
            by="this dashboard heard it",
            max_age=self.max_task_age,
            max_skew=self.max_clock_skew,
        )
        if old is not None:
            return _error(f"job {task_id}: {old}", 409)
        body = await _body(request)
        if body is None or not isinstance(body.get("failed", False), bool):
            return _error("the body must be a JSON object whose failed, if given, is true or false", 400)
        try:
            hosts = await self._failed_hosts(task_id) if body.get("failed") else None
            job = relaunch_request(original, only_hosts=hosts)
        except RelaunchError as exc:
            return _error(f"job {task_id}: {exc}", 409)
        try:
            with trio.fail_after(ACTION_WITHIN):
                handle = await self.client.submit(job, events=False)
                await handle.close()
        except NoWorkerAnswered as exc:
            return _error(str(exc), 503)
        except (trio.TooSlowError, LinkError, ClientError) as exc:
            return _error(f"could not reach the broker: {exc or 'timed out'}", 503)
        return _json({"task_id": job["task_id"], "again_of": task_id}, 201)

    async def _failed_hosts(self, task_id: str) -> list[str]:
        """The hosts of `task_id` that failed or were unreachable, from its record.

        Errors: `RelaunchError` when there is no usable record. Cancellation: bounded by ACTION_WITHIN.
        """
        record = None
        with trio.move_on_after(ACTION_WITHIN), suppress(ClientError):
            record = await self.client.record(task_id)
        if record is None:
            raise RelaunchError("its record, which says which hosts failed, cannot be read")
        return failed_hosts(record)


async def _body(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    if len(raw) > 64 * 1024:
        return None
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _sse(message: dict[str, Any]) -> str:
    return "data: " + json.dumps(finite(message), separators=(",", ":")) + "\n\n"
