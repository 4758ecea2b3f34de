"""Send a job's notifications to webhooks: at most once per job, event and target, never in the job's way.

`offer` is synchronous and never waits: it puts the notification on a bounded queue (a full
queue drops it, logged and counted). One task takes them off and sends each in a nursery of
its own, retrying with a doubling backoff up to the target's `attempts`. Before the first
attempt the key (job, event, target) is recorded, and in `state_dir` when the worker has one,
so neither a retry storm nor a restart sends it twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import deque
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import httpx
import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.ops.template_settings import NotificationEvent, NotificationTarget
from ansible_worker.protocol.models import JobStatus

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
# Deliveries in flight at once, over all targets.
SENDING_AT_ONCE = 16
SIGNATURE_HEADER = "X-Ansible-Worker-Signature"
SENT_FILE = "notifications-sent"
# Keys kept: far more than the jobs a journal can hold unsettled, which are all a restart posts again.
KEYS_KEPT = 100_000


@dataclass(frozen=True)
class Notice:
    """One event of one job, for every target that wants it; the status is masked already, as published."""

    event: NotificationEvent
    status: JobStatus

    @property
    def template(self) -> str | None:
        """The template the job was launched from, if any."""
        return self.status.template


def signature(secret: str, body: bytes) -> str:
    """The header value for `body`: `sha256=` and the HMAC-SHA256 hex digest, as GitHub signs webhooks."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(target: NotificationTarget, notice: Notice, *, dashboard_url: str | None) -> dict[str, Any]:
    """The JSON body in the target's format."""
    status = notice.status
    link = f"{dashboard_url.rstrip('/')}/#/job/{status.task_id}" if dashboard_url else None
    what = f"template {notice.template}" if notice.template else f"playbook {status.playbook}"
    text = f"ansible-worker: job {status.task_id} ({what}) {notice.event}"
    if status.error_message:
        text += f": {status.error_message}"
    if target.format == "slack":
        # Slack reads <...> as links and mentions (<!channel>): a job's text is escaped as its docs say.
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return {"text": escaped + (f" <{link}|details>" if link else "")}
    if target.format == "teams":
        return {"text": text + (f" [details]({link})" if link else "")}
    return {
        "event": notice.event,
        "task_id": status.task_id,
        "template": notice.template,
        "playbook": status.playbook,
        "worker_id": status.worker_id,
        "dashboard_url": link,
        "status": status.model_dump(mode="json", exclude={"output_per_host"}),
    }


def wanted(target: NotificationTarget, notice: Notice) -> bool:
    """Whether `target` asked for this event of this job."""
    if notice.event not in target.on:
        return False
    if target.templates is not None and not (
        notice.template is not None and any(fnmatchcase(notice.template, p) for p in target.templates)
    ):
        return False
    playbook = notice.status.playbook or ""
    return target.playbooks is None or any(fnmatchcase(playbook, p) for p in target.playbooks)


class Notifier:
    """The worker's notifications: a bounded queue and the one task that sends what is on it."""

    def __init__(
        self,
        targets: list[NotificationTarget],
        *,
        dashboard_url: str | None,
        state_dir: Path | None,
        metrics: WorkerMetrics,
    ) -> None:
        self.targets = targets
        self.dashboard_url = dashboard_url
        self.metrics = metrics
        self._appended = 0
        # Set when `serve` returns after `close`: everything offered was delivered or given up.
        self.finished = trio.Event()
        self._send, self._receive = trio.open_memory_channel[Notice](QUEUE_SIZE)
        self._sent_file = state_dir / SENT_FILE if state_dir is not None else None
        # The newest keys, in order: what a restart must not send again (the journal holds no older job).
        self._order: deque[str] = deque()
        self._sent: set[str] = set()
        if self._sent_file is not None and self._sent_file.exists():
            for key in self._sent_file.read_text().split()[-KEYS_KEPT:]:
                self._remember(key)
            self._compact()

    def offer_status(self, status: JobStatus) -> None:
        """Offer the notice of a status the worker posts (see `StatusPath.on_post`); never waits."""
        notice = notice_of(status)
        if notice is not None:
            self.offer(notice)

    def offer(self, notice: Notice) -> None:
        """Queue `notice` for its targets; never waits (a full queue drops it, logged and counted)."""
        if not any(wanted(target, notice) for target in self.targets):
            return
        try:
            self._send.send_nowait(notice)
        except trio.ClosedResourceError:
            return
        except trio.WouldBlock:
            self.metrics.notifications_failed += 1
            log.warning("task %s: notification %s dropped: the queue is full", notice.status.task_id, notice.event)

    def close(self) -> None:
        """Take no more notices: `serve` returns once those offered are delivered or given up."""
        self._send.close()

    async def serve(self) -> None:
        """Send what is offered until cancelled or closed; each delivery in its own task, `SENDING_AT_ONCE` at most.

        Cancellation: deliveries in flight end where they are; a notice not yet sent is not
        sent (its key was recorded: at most once).
        """
        limit = trio.CapacityLimiter(SENDING_AT_ONCE)
        async with httpx.AsyncClient(follow_redirects=False) as client, trio.open_nursery() as nursery:
            async for notice in self._receive:
                for target in self.targets:
                    if wanted(target, notice) and self._first_time(notice, target):
                        nursery.start_soon(self._deliver, client, limit, target, notice)
        self.finished.set()

    def _first_time(self, notice: Notice, target: NotificationTarget) -> bool:
        key = hashlib.sha256(f"{notice.status.task_id}\0{notice.event}\0{target.label}".encode()).hexdigest()[:32]
        if key in self._sent:
            return False
        self._remember(key)
        if self._sent_file is not None:
            # Written before the first attempt: at most once, even across a restart mid-send.
            with self._sent_file.open("a") as file:
                file.write(key + "\n")
            self._appended += 1
            if self._appended > KEYS_KEPT:
                self._compact()
        return True

    def _remember(self, key: str) -> None:
        self._order.append(key)
        self._sent.add(key)
        while len(self._order) > KEYS_KEPT:
            self._sent.discard(self._order.popleft())

    def _compact(self) -> None:
        """Keep only the newest keys on disk, replaced whole so that a crash leaves one file or the other."""
        self._appended = 0
        if self._sent_file is None:
            return
        partial = self._sent_file.with_suffix(".new")
        partial.write_text("".join(f"{key}\n" for key in self._order))
        partial.replace(self._sent_file)

    async def _deliver(
        self, client: httpx.AsyncClient, limit: trio.CapacityLimiter, target: NotificationTarget, notice: Notice
    ) -> None:
        body = json.dumps(body_of(target, notice, dashboard_url=self.dashboard_url)).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "ansible-worker"}
        if target.secret is not None:
            headers[SIGNATURE_HEADER] = signature(target.secret.get_secret_value(), body)
        task_id, delay = notice.status.task_id, target.backoff
        for attempt in range(1, target.attempts + 1):
            problem: str
            async with limit:
                try:
                    with trio.fail_after(target.timeout):
                        response = await client.post(target.url.get_secret_value(), content=body, headers=headers)
                except trio.TooSlowError:
                    problem = f"no answer within {target.timeout:g}s"
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                else:
                    if response.is_success:
                        self.metrics.notifications_sent += 1
                        return
                    problem = f"HTTP {response.status_code}"
            self.metrics.notifications_failed += 1
            last = attempt == target.attempts
            log.warning(
                "task %s: notification %s to %s failed (attempt %d of %d): %s%s",
                task_id,
                notice.event,
                target.label,
                attempt,
                target.attempts,
                problem,
                "; giving up" if last else f"; again in {delay:g}s",
            )
            if not last:
                await trio.sleep(delay)
                delay *= 2


_EVENTS: dict[str, NotificationEvent] = {
    "running": "started",
    "success": "success",
    "failed": "failed",
    "timeout": "timeout",
    "cancelled": "cancelled",
}


def notice_of(status: JobStatus) -> Notice | None:
    """The notice a posted status makes: its state's event, or None (`queued`, a live refusal).

    A job a survivor settles for a lost worker (its status says `taken_over_by`) is `lost`.
    """
    event = _EVENTS.get(status.state.value)
    if event == "failed" and status.taken_over_by:
        event = "lost"
    return Notice(event, status) if event is not None and not status.refused else None
