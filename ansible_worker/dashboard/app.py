"""The dashboard's ASGI app: the page, its live stream of changes, and the cancel and run-again endpoints."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ansible_worker.controller.client import Client, ClientError, NoWorkerAnswered, default_requester
from ansible_worker.controller.payloads import finite
from ansible_worker.dashboard.access import ACTION_HEADER, TOKEN_HEADER, is_loopback, same_origin, token_ok
from ansible_worker.dashboard.limits import ROW_TEXT, STILL_GOING
from ansible_worker.dashboard.pages import Page, RecordReader
from ansible_worker.dashboard.store import Store, summary
from ansible_worker.mqtt.link import LinkError
from ansible_worker.protocol.topics import is_task_id

if TYPE_CHECKING:
    # Only for its type: the history package is loaded only when a store is configured.
    from ansible_worker.history.reader import History

STATIC = Path(__file__).parent / "static"
# A comment line this often keeps proxies and the browser from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
ACTION_WITHIN = 15.0
# A page of jobs from the history store: as many as the page shows at once.
STORED_PAGE = 50
# What a stored job's list line shows may be filtered by: the states a status can have.
_STATES = ("queued", "running", "success", "failed", "cancelled", "timeout")
# The job list's time filter: how far back each choice reaches, in seconds.
_SINCE = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
# Events of a record read between two checkpoints: about 20 ms of work.
READ_STEP = 1000
_SIGNATURE_FIELDS = ("signature", "issued_at")
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
        history: History | None = None,
    ) -> None:
        self.store = store
        self.history = history
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
                Route("/api/jobs", self.jobs),
                Route("/api/jobs/{task_id}/record", self.record),
                Route("/api/jobs/{task_id}/page", self.page),
                Route("/api/jobs/{task_id}/results/{task:int}/{host:int}", self.result),
                Route("/api/jobs/{task_id}/cancel", self.cancel, methods=["POST"]),
                Route("/api/jobs/{task_id}/rerun", self.rerun, methods=["POST"]),
                Route("/api/templates/{name}/launch", self.launch, methods=["POST"]),
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
        return _json(
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
        if (bad := _not_a_task_id(job)) is not None:
            return bad
        stored = None
        if job is not None and job not in self.store.jobs:
            stored = await self._stored_status(job)
        headers = {**_HEADERS, "X-Accel-Buffering": "no"}
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
        `_SINCE`'s spans back from now); `before` is the `next` of the previous page. Without a
        store: 404, and the page lists what the dashboard holds.

        Cancellation: bounded by ACTION_WITHIN.
        """
        if "host" in request.query_params:
            return await self.jobs_on_host(request)
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        if self.history is None:
            return _error("no history store: set history.url", 404)
        from ansible_worker.history.reader import HistoryError, JobQuery

        wanted = request.query_params.get("state") or None
        if wanted is not None and wanted not in _STATES:
            return _error(f"state must be one of {', '.join(_STATES)}", 400)
        playbook = request.query_params.get("playbook", "").strip()
        if len(playbook) > 256:
            return _error("playbook filter: at most 256 characters", 400)
        worker = request.query_params.get("worker") or None
        if worker is not None and len(worker) > ROW_TEXT:
            return _error(f"worker filter: at most {ROW_TEXT} characters", 400)
        span = request.query_params.get("since") or None
        if span is not None and span not in _SINCE:
            return _error(f"since must be one of {', '.join(_SINCE)}", 400)
        try:
            before = _cursor(request.query_params.get("before"))
        except ValueError:
            return _error("before: the `next` of a previous page", 400)
        query = JobQuery(
            states=frozenset({wanted}) if wanted else None,
            playbook=f"*{playbook}*" if playbook else None,
            worker=worker,
            since=None if span is None else datetime.now(UTC).timestamp() - _SINCE[span],
            limit=STORED_PAGE,
            before=before,
        )
        with trio.move_on_after(ACTION_WITHIN):
            try:
                page = await self.history.jobs(query)
            except HistoryError as exc:
                return _error(str(exc), 503)
            rows = []
            for status in page.statuses:
                task_id = str(status.get("task_id"))
                row = self.store.row(task_id) if task_id in self.store.jobs else {**summary(status), "order": 0}
                row.setdefault("can_run_again", task_id in self.store.requests)
                rows.append(row)
            following = None if page.next is None else f"{page.next[0]!r},{page.next[1]}"
            return _json({"jobs": rows, "next": following})
        return _error("the history store did not answer in time", 503)

    async def _events(self, job: str | None, stored: dict[str, Any] | None) -> AsyncIterator[str]:
        with self.store.listen(job, stored) as (first, receive):
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
            found = await self._record(task_id)
            if found is not None:
                return _json(found)
        return _error("no record of this job", 404)

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
        if (bad := _not_a_task_id(task_id)) is not None:
            return bad
        page = await self._page(task_id)
        if page is None:
            return _error("this dashboard has not heard of this job", 404)
        return _json(page.data())

    async def result(self, request: Request) -> Response:
        """One host's result of one task (by their numbers on the page), whole as its events carried it.

        Cancellation: as `page`.
        """
        refused = self._refused(request, action=False)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := _not_a_task_id(task_id)) is not None:
            return bad
        page = await self._page(task_id)
        found = page.view.result(request.path_params["task"], request.path_params["host"]) if page else None
        if found is None:
            return _error("no such result of this job", 404)
        return _json(found)

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
            return _error(f"host must be a text of 1 to {ROW_TEXT} characters", 400)
        return _json({"host": host, "task_ids": self.store.jobs_on_host(host)})

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
        """Submit a finished job's request again under a new task_id.

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
        refusal = _not_ours(original, self.client)
        if refusal is not None:
            return _error(f"job {task_id}: {refusal}", 409)
        heard = self.store.heard_at.get(task_id)
        too_old = _too_old(original, self.client, heard=heard, max_age=self.max_task_age, max_skew=self.max_clock_skew)
        if too_old is not None:
            return _error(f"job {task_id}: {too_old}", 409)
        job = {key: value for key, value in original.items() if key not in _SIGNATURE_FIELDS}
        job["task_id"] = f"job-{uuid.uuid4().hex[:12]}"
        try:
            with trio.fail_after(ACTION_WITHIN):
                handle = await self.client.submit(job, events=False)
                await handle.close()
        except NoWorkerAnswered as exc:
            return _error(str(exc), 503)
        except (trio.TooSlowError, LinkError, ClientError) as exc:
            return _error(f"could not reach the broker: {exc or 'timed out'}", 503)
        self.store.note_again(job["task_id"], task_id)
        return _json({"task_id": job["task_id"], "again_of": task_id}, 201)

    async def launch(self, request: Request) -> Response:
        """Launch a template of the group's catalogue with the form's answers, under a new task_id.

        The body is `{"answers": {variable: value}}`: a text is read by the variable's type,
        as `launch -e NAME=VALUE` reads it; an empty text is no answer. The answers are
        checked against the survey here, and again by the worker.

        Cancellation: bounded by ACTION_WITHIN (the client's own answer bound is shorter).
        """
        refused = self._refused(request, action=True)
        if refused is not None:
            return refused
        catalogue = self.store.catalogue or {}
        view = catalogue.get("templates", {}).get(request.path_params["name"])
        if view is None:
            return _error("no such template in the group's catalogue", 404)
        body = await _body(request)
        given = body.get("answers", {}) if body is not None else None
        if not isinstance(given, dict):
            return _error('the body must be a JSON object {"answers": {...}}', 400)
        try:
            answers = _answers(view.get("survey", {}), given)
        except ValueError as exc:
            return _error(str(exc), 400)
        job = {
            "task_id": f"job-{uuid.uuid4().hex[:12]}",
            "template": request.path_params["name"],
            "extra_vars": answers,
        }
        try:
            with trio.fail_after(ACTION_WITHIN):
                handle = await self.client.submit(job, events=False)
                await handle.close()
        except NoWorkerAnswered as exc:
            return _error(str(exc), 503)
        except (trio.TooSlowError, LinkError, ClientError) as exc:
            return _error(f"could not reach the broker: {exc or 'timed out'}", 503)
        return _json({"task_id": job["task_id"], "template": job["template"]}, 201)


def _answers(survey: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The form's answers as values of their survey types. Errors: `ValueError` naming the variable and the rule."""
    from ansible_worker.protocol.survey import SurveyRule

    rules = {name: SurveyRule.model_validate(rule) for name, rule in survey.items()}
    answers: dict[str, Any] = {}
    for name, value in given.items():
        rule = rules.get(name)
        if rule is None:
            raise ValueError(f"{str(name)[:100]}: not a survey variable of this template")
        if value == "" or value is None:
            continue
        answers[name] = rule.from_text(name, value) if isinstance(value, str) else rule.check(name, value)
    for name, rule in rules.items():
        if rule.required and name not in answers and rule.default is None and not rule.has_default:
            raise ValueError(f"{name}: an answer is required (required)")
    return answers


def _not_ours(original: dict[str, Any], client: Client) -> str | None:
    """Why a heard request must not be signed again by this dashboard, or None.

    Anyone who may publish on the tasks topic can send a copy of a job with other fields;
    signing it again would lend the dashboard's key to them. So with a signing key, only a
    request signed by that same key is run again.
    """
    signer = client.signer
    if signer is None:
        return None
    from ansible_worker.protocol.signing import SignatureRefused, TrustedKeys

    try:
        TrustedKeys({"dashboard": signer.public_key}).verify(client.topics.tasks, original)
    except SignatureRefused as exc:
        return f"its request is not signed by this dashboard's key ({exc}); it is not signed again"
    return None


def _too_old(
    original: dict[str, Any], client: Client, *, heard: datetime | None, max_age: float, max_skew: float
) -> str | None:
    """Why a request this dashboard's key signed was too old to run when it was `heard` (None: now), or None.

    The workers' own rule, applied when the request arrived: a copy of one signed long ago,
    replayed to the dashboard, is not made new by a fresh signature. Not applied when the
    button is pressed: run again is for jobs that have ended, often long after `max_age`.
    """
    if client.signer is None:
        return None
    from ansible_worker.protocol.signing import SignatureRefused, check_age, issued_at

    try:
        check_age(issued_at(original), now=heard or datetime.now(UTC), max_age=max_age, max_skew=max_skew)
    except SignatureRefused as exc:
        return f"its request was too old to run when this dashboard heard it ({exc}); it is not signed again"
    return None


async def _body(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    if len(raw) > 64 * 1024:
        return None
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _cursor(text: str | None) -> tuple[float, str] | None:
    """A page's `before` (`began,task_id`), or None when absent. Errors: `ValueError` when it is not one."""
    if not text:
        return None
    began, _, task_id = text.partition(",")
    moment = float(began)
    if not is_task_id(task_id) or not math.isfinite(moment):
        raise ValueError(text)
    return moment, task_id


def _sse(message: dict[str, Any]) -> str:
    return "data: " + json.dumps(finite(message), separators=(",", ":")) + "\n\n"
