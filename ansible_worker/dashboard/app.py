"""The dashboard's ASGI app: the page, its live stream of changes, the jobs and pages it reads, and its routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ansible_worker.controller.client import Client, ClientError
from ansible_worker.dashboard.access import ACTION_HEADER, TOKEN_HEADER, is_loopback, same_origin, token_ok
from ansible_worker.dashboard.actions import Actions
from ansible_worker.dashboard.limits import ROW_TEXT, STILL_GOING
from ansible_worker.dashboard.pages import Page, RecordReader
from ansible_worker.dashboard.responses import (
    ACTION_WITHIN,
    HEADERS,
    error_response,
    json_response,
    not_a_task_id,
    sse,
)
from ansible_worker.dashboard.store import Store, summary
from ansible_worker.dashboard.stored_jobs import job_query

if TYPE_CHECKING:
    # Only for its type: the history package is loaded only when a store is configured.
    from ansible_worker.history.reader import History

STATIC = Path(__file__).parent / "static"
# A comment line this often keeps proxies and the browser from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
# Events of a record read between two checkpoints: about 20 ms of work.
READ_STEP = 1000


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
        history: History | None = None,
    ) -> None:
        self.store = store
        self.history = history
        self.client = client
        self.token = token
        self.allow_actions = allow_actions
        self.listen_host = listen_host
        self.actions = Actions(
            store,
            client,
            refused=partial(self._refused, action=True),
            max_task_age=max_task_age,
            max_clock_skew=max_clock_skew,
        )
        # Run again on failed hosts reads the record where the page does: the history store first.
        self.actions.read_record = self._record

    def app(self) -> Starlette:
        """The ASGI app."""
        return Starlette(
            routes=[
                Route("/", self.index),
                Route("/api/config", self.config),
                Route("/api/stream", self.stream),
                Route("/api/jobs", self.jobs),
                Route("/api/jobs/{task_id}/record", self.record),
                Route("/api/jobs/{task_id}/page", self.page),
                Route("/api/jobs/{task_id}/results/{task:int}/{host:int}", self.result),
                Route("/api/jobs/{task_id}/cancel", self.actions.cancel, methods=["POST"]),
                Route("/api/jobs/{task_id}/rerun", self.actions.rerun, methods=["POST"]),
                Route("/api/templates/{name}/launch", self.actions.launch, methods=["POST"]),
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
            return error_response("unknown Host header", 403)
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token")
        if not token_ok(self.token, given):
            return error_response("a valid dashboard token is required", 401)
        if not action:
            return None
        if not self.allow_actions:
            return error_response("actions are off: start the dashboard with --allow-actions", 403)
        if request.headers.get(ACTION_HEADER) != "1" or not same_origin(
            request.headers.get("origin"), request.headers.get("host")
        ):
            return error_response("cross-site request refused", 403)
        if self.token is not None and not token_ok(self.token, request.headers.get(TOKEN_HEADER)):
            return error_response("a valid dashboard token header is required", 401)
        return None

    async def index(self, request: Request) -> Response:
        """The page.

        Cancellation: a file read, ended with the request.
        """
        if not self._host_ok(request):
            return error_response("unknown Host header", 403)
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    async def config(self, request: Request) -> Response:
        """What the page needs before it asks for anything: whether a token is needed, and actions.

        Cancellation: answers at once.
        """
        if not self._host_ok(request):
            return error_response("unknown Host header", 403)
        return json_response(
            {
                "token_required": self.token is not None,
                "allow_actions": self.allow_actions,
                "history": bool(self.history),
            }
        )

    async def stream(self, request: Request) -> Response:
        """Server-Sent Events: a snapshot, then every change (and the lines of `?job=`).

        Cancellation: the stream ends when the browser goes away or the server shuts down.
        """
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        job = request.query_params.get("job") or None
        if (bad := not_a_task_id(job)) is not None:
            return bad
        stored = None
        if job is not None and job not in self.store.jobs:
            stored = await self._stored_status(job)
        headers = {**HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(self._events(job, stored), media_type="text/event-stream", headers=headers)

    async def _stored_status(self, task_id: str) -> dict[str, Any] | None:
        """Job `task_id`'s status from the history store, or None (no store, no such job, or the store away)."""
        if self.history is None:
            return None
        from ansible_worker.history.reader import HistoryError

        with trio.move_on_after(ACTION_WITHIN):
            try:
                return await self.history.status(task_id)
            except HistoryError:
                return None
        return None

    async def jobs(self, request: Request) -> Response:
        """A page of jobs from the history store, newest first, filtered there; or, with `?host=`, `jobs_on_host`.

        Filters: `state`, `playbook` (where the name contains it), `worker` (its id), `since` (one of
        `stored_jobs.SINCE`'s spans back from now); `before` is the `next` of the previous page. Without a
        store: 404, and the page lists what the dashboard holds.

        Cancellation: bounded by ACTION_WITHIN.
        """
        if "host" in request.query_params:
            return await self.jobs_on_host(request)
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        if self.history is None:
            return error_response("no history store: set history.url", 404)
        from ansible_worker.history.reader import HistoryError

        try:
            query = job_query(request.query_params)
        except ValueError as exc:
            return error_response(str(exc), 400)
        with trio.move_on_after(ACTION_WITHIN):
            try:
                page = await self.history.jobs(query)
            except HistoryError as exc:
                return error_response(str(exc), 503)
            rows = []
            for status in page.statuses:
                task_id = str(status.get("task_id"))
                row = self.store.row(task_id) if task_id in self.store.jobs else {**summary(status), "order": 0}
                row.setdefault("can_run_again", task_id in self.store.requests)
                rows.append(row)
            following = None if page.next is None else f"{page.next[0]!r},{page.next[1]}"
            return json_response({"jobs": rows, "next": following})
        return error_response("the history store did not answer in time", 503)

    async def _events(self, job: str | None, stored: dict[str, Any] | None) -> AsyncIterator[str]:
        with self.store.listen(job, stored) as (first, receive):
            yield sse(first)
            while True:
                message = None
                with trio.move_on_after(KEEPALIVE_SECONDS):
                    message = await receive.receive()
                yield ": keepalive\n\n" if message is None else sse(message)

    async def record(self, request: Request) -> Response:
        """A finished job's record, or 404 while the group publishes none.

        Cancellation: bounded by ACTION_WITHIN.
        """
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := not_a_task_id(task_id)) is not None:
            return bad
        with trio.move_on_after(ACTION_WITHIN):
            found = await self._record(task_id)
            if found is not None:
                # Its request's extra_vars may hold secrets: the page never gets them.
                return json_response({key: value for key, value in found.items() if key != "request"})
        return error_response("no record of this job", 404)

    async def _record(self, task_id: str) -> dict[str, Any] | None:
        """A finished job's record, or None: where the dashboard reads records from, in one place.

        The history store's copy first, when there is a store: the broker's may have expired. A
        record that cannot be read counts as none (the client or the store has said why).

        Cancellation: the record subscription is removed; the caller bounds the wait.
        """
        if self.history is not None:
            from ansible_worker.history.reader import HistoryError

            with suppress(HistoryError):
                found = await self.history.record(task_id)
                if found is not None:
                    return found
        with suppress(ClientError):
            return await self.client.record(task_id)
        return None

    async def page(self, request: Request) -> Response:
        """A job's page data: hosts, tasks and results, and Ansible's output; from its record once it has ended.

        Cancellation: bounded by ACTION_WITHIN; without the record in time, the live page.
        """
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := not_a_task_id(task_id)) is not None:
            return bad
        page = await self._page(task_id)
        if page is None:
            return error_response("this dashboard has not heard of this job", 404)
        return json_response(page.data())

    async def result(self, request: Request) -> Response:
        """One host's result of one task (by their numbers on the page), whole as its events carried it.

        Cancellation: as `page`.
        """
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := not_a_task_id(task_id)) is not None:
            return bad
        page = await self._page(task_id)
        found = page.view.result(request.path_params["task"], request.path_params["host"]) if page else None
        if found is None:
            return error_response("no such result of this job", 404)
        return json_response(found)

    async def _page(self, task_id: str) -> Page | None:
        """The page of a known job: built from its record once it has ended and one is there, else from live events.

        A job this dashboard does not hold is known when the history store has it. A finished
        job's record is read through `_record`, as the record endpoint reads it.
        """
        status = self.store.jobs.get(task_id)
        if status is None:
            status = await self._stored_status(task_id)
        if status is None:
            return None
        if status.get("state") in STILL_GOING:
            return self.store.live_page(task_id)
        kept = self.store.record_page(task_id)
        if kept is not None:
            return kept
        with trio.move_on_after(ACTION_WITHIN):
            record = await self._record(task_id)
            if record is not None:
                reader = RecordReader(record)
                # Some events at a time: the other pages' streams go on in between.
                for _ in reader.steps(READ_STEP):
                    await trio.lowlevel.checkpoint()
                page = reader.page()
                self.store.keep_record_page(task_id, page)
                return page
        return self.store.live_page(task_id)

    async def jobs_on_host(self, request: Request) -> Response:
        """The task_ids of the jobs known to have run on a host whose name contains `?host=` (any case).

        Cancellation: answers at once.
        """
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        host = request.query_params.get("host", "")
        if not host or len(host) > ROW_TEXT:
            return error_response(f"host must be a text of 1 to {ROW_TEXT} characters", 400)
        return json_response({"host": host, "task_ids": self.store.jobs_on_host(host)})
