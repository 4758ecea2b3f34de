"""The dashboard's actions: cancel a job, run a finished one again, and launch a template of the catalogue."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from ansible_worker.controller.client import Client, ClientError, NoWorkerAnswered, default_requester
from ansible_worker.controller.relaunch import RelaunchError, failed_hosts, not_ours, relaunch_request, too_old
from ansible_worker.dashboard.responses import ACTION_WITHIN, error_response, json_body, json_response, not_a_task_id
from ansible_worker.dashboard.store import Store
from ansible_worker.mqtt.link import LinkError


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
        # Where a job's record is read from (the dashboard's one place for it); the client by default.
        self.read_record: Callable[[str], Awaitable[dict[str, Any] | None]] = client.record

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
        """Submit a finished job's request again under a new task_id; with `{"failed": true}`, on its failed hosts.

        The failed hosts come from the job's record; the request, as for a whole run again,
        from what this dashboard heard.

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
        refusal = not_ours(original, self.client, key="this dashboard's key") or too_old(
            original,
            self.client,
            heard=self.store.heard_at.get(task_id),
            by="this dashboard heard it",
            max_age=self.max_task_age,
            max_skew=self.max_clock_skew,
        )
        if refusal is not None:
            return error_response(f"job {task_id}: {refusal}", 409)
        body = await json_body(request)
        if body is None or not isinstance(body.get("failed", False), bool):
            return error_response("the body must be a JSON object whose failed, if given, is true or false", 400)
        try:
            hosts = await self._failed_hosts(task_id) if body.get("failed") else None
            job = relaunch_request(original, only_hosts=hosts)
        except RelaunchError as exc:
            return error_response(f"job {task_id}: {exc}", 409)
        failed = await self._submit(job)
        if failed is not None:
            return failed
        self.store.note_again(job["task_id"], task_id)
        return json_response({"task_id": job["task_id"], "again_of": task_id}, 201)

    async def _failed_hosts(self, task_id: str) -> list[str]:
        """The hosts of `task_id` that failed or were unreachable, from its record.

        Errors: `RelaunchError` when there is no usable record. Cancellation: bounded by ACTION_WITHIN.
        """
        record = None
        with trio.move_on_after(ACTION_WITHIN), suppress(ClientError):
            record = await self.read_record(task_id)
        if record is None:
            raise RelaunchError("its record, which says which hosts failed, cannot be read")
        return failed_hosts(record)

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
