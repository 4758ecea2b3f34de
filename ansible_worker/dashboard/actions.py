"""The dashboard's actions: cancel a job, run a finished one again, and launch a template of the catalogue."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from ansible_worker.controller.client import Client, ClientError, NoWorkerAnswered, default_requester
from ansible_worker.dashboard.responses import ACTION_WITHIN, error_response, json_body, json_response, not_a_task_id
from ansible_worker.dashboard.store import Store
from ansible_worker.mqtt.link import LinkError

_SIGNATURE_FIELDS = ("signature", "issued_at")


class Actions:
    """The endpoints that publish to the group, each behind the dashboard's check of who may act."""

    def __init__(
        self,
        store: Store,
        client: Client,
        *,
        refused: Callable[[Request], Response | None],
        max_task_age: float,
        max_clock_skew: float,
    ) -> None:
        self.store = store
        self.client = client
        self.refused = refused
        self.max_task_age = max_task_age
        self.max_clock_skew = max_clock_skew

    async def cancel(self, request: Request) -> Response:
        """Ask the group to cancel a queued or running job, with the reason given.

        Cancellation: bounded by ACTION_WITHIN; a cancel request already published stays published.
        """
        refused = self.refused(request)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := not_a_task_id(task_id)) is not None:
            return bad
        status = self.store.jobs.get(task_id)
        if status is None or status.get("state") not in ("queued", "running"):
            return error_response(f"job {task_id} is not queued or running", 409)
        body = await json_body(request)
        if body is None:
            return error_response("the body must be a JSON object", 400)
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1024):
            return error_response("reason must be a text of at most 1024 characters", 400)
        requested_by = f"dashboard {default_requester()}"[:128]
        try:
            with trio.fail_after(ACTION_WITHIN):
                await self.client.cancel(task_id, reason=reason or None, requested_by=requested_by)
        except (trio.TooSlowError, LinkError, ClientError) as exc:
            return error_response(f"could not reach the broker: {exc or 'timed out'}", 503)
        return json_response({"task_id": task_id, "requested": "cancel"}, 202)

    async def rerun(self, request: Request) -> Response:
        """Submit a finished job's request again under a new task_id.

        Cancellation: bounded by ACTION_WITHIN (the client's own answer bound is shorter).
        """
        refused = self.refused(request)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        if (bad := not_a_task_id(task_id)) is not None:
            return bad
        status = self.store.jobs.get(task_id)
        original = self.store.requests.get(task_id)
        if status is None or status.get("state") in ("queued", "running"):
            return error_response(f"job {task_id} has not finished", 409)
        if status.get("refused"):
            return error_response(f"job {task_id} was refused, not run: it is not run again", 409)
        if original is None:
            return error_response(
                f"the request of job {task_id} was published before this dashboard started, or is no longer kept",
                409,
            )
        refusal = _not_ours(original, self.client)
        if refusal is not None:
            return error_response(f"job {task_id}: {refusal}", 409)
        heard = self.store.heard_at.get(task_id)
        too_old = _too_old(original, self.client, heard=heard, max_age=self.max_task_age, max_skew=self.max_clock_skew)
        if too_old is not None:
            return error_response(f"job {task_id}: {too_old}", 409)
        job = {key: value for key, value in original.items() if key not in _SIGNATURE_FIELDS}
        job["task_id"] = f"job-{uuid.uuid4().hex[:12]}"
        failed = await self._submit(job)
        if failed is not None:
            return failed
        self.store.note_again(job["task_id"], task_id)
        return json_response({"task_id": job["task_id"], "again_of": task_id}, 201)

    async def launch(self, request: Request) -> Response:
        """Launch a template of the group's catalogue with the form's answers, under a new task_id.

        The body is `{"answers": {variable: value}}`: a text is read by the variable's type,
        as `launch -e NAME=VALUE` reads it; an empty text is no answer. The answers are
        checked against the survey here, and again by the worker.

        Cancellation: bounded by ACTION_WITHIN (the client's own answer bound is shorter).
        """
        refused = self.refused(request)
        if refused is not None:
            return refused
        catalogue = self.store.catalogue or {}
        view = catalogue.get("templates", {}).get(request.path_params["name"])
        if view is None:
            return error_response("no such template in the group's catalogue", 404)
        body = await json_body(request)
        given = body.get("answers", {}) if body is not None else None
        if not isinstance(given, dict):
            return error_response('the body must be a JSON object {"answers": {...}}', 400)
        try:
            answers = _answers(view.get("survey", {}), given)
        except ValueError as exc:
            return error_response(str(exc), 400)
        job = {
            "task_id": f"job-{uuid.uuid4().hex[:12]}",
            "template": request.path_params["name"],
            "extra_vars": answers,
        }
        failed = await self._submit(job)
        if failed is not None:
            return failed
        return json_response({"task_id": job["task_id"], "template": job["template"]}, 201)

    async def _submit(self, job: dict[str, Any]) -> Response | None:
        """Publish `job` as the client does; None once a worker answered, else the error answer."""
        try:
            with trio.fail_after(ACTION_WITHIN):
                handle = await self.client.submit(job, events=False)
                await handle.close()
        except NoWorkerAnswered as exc:
            return error_response(str(exc), 503)
        except (trio.TooSlowError, LinkError, ClientError) as exc:
            return error_response(f"could not reach the broker: {exc or 'timed out'}", 503)
        return None


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
