"""A Trio client for controllers: submit jobs, follow their statuses and events, cancel, forget, list workers.

Example::

    async with open_client(target_from_url("mqtt://broker.example", group="web")) as client:
        job = await client.submit({"playbook": "site.yml", "inventory": "hosts.ini"})
        async for update in job.updates():
            print(update.kind, update.data)
        print((await job.wait())["state"])

The connection outlives a broker restart: when it drops, the client connects again (for up
to `reconnect_for` seconds), subscribes again to everything it follows, and `submit`
publishes an unanswered job again, byte for byte.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ansible_worker.controller.errors import (
    CatalogueUnreadable,
    ClientError,
    JobLost,
    NoWorkerAnswered,
    SigningKeyError,
    no_worker_answered,
)
from ansible_worker.controller.job_filter import select_jobs
from ansible_worker.controller.job_handle import JobHandle, Update, checked_task_id, lost_message
from ansible_worker.controller.payloads import job_record
from ansible_worker.controller.shipping import DEFAULT_CONTENT_RETENTION, ShipProgress
from ansible_worker.controller.submission import job_payload, most_attempts
from ansible_worker.controller.target import Target, load_signer, new_client_id, target_from_settings, target_from_url
from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.mqtt.link import MqttLink
from ansible_worker.mqtt.options import InboundMessage, LinkError, LinkLost
from ansible_worker.mqtt.reconnect import GaveUp, Reconnect
from ansible_worker.mqtt.retained import barrier, retained
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.topics import Topics

if TYPE_CHECKING:
    from ansible_worker.protocol.group_messages import TemplateCatalogue
    from ansible_worker.protocol.signing import Signer

__all__ = [
    "Client",
    "ClientError",
    "JobHandle",
    "JobLost",
    "NoWorkerAnswered",
    "SigningKeyError",
    "Target",
    "Update",
    "default_requester",
    "load_signer",
    "lost_message",
    "open_client",
    "target_from_settings",
    "target_from_url",
]

log = logging.getLogger(__name__)

# `submit`: give up when no worker answered within ANSWER_WITHIN seconds in all; publish the
# job again each time RETRY_AFTER seconds pass without an answer.
ANSWER_WITHIN = 10.0
RETRY_AFTER = 5.0
# How long a client whose connection dropped keeps trying to connect again.
RECONNECT_FOR = 60.0


def reconnect_policy(reconnect_for: float) -> Reconnect:
    """A client's: a short backoff, the first connection's failure raised, no link within `reconnect_for` an error.

    A warning when the link drops; the attempts after it only at INFO.
    """
    return Reconnect(
        first=0.1,
        most=2.0,
        steady=2.0,
        give_up_after=reconnect_for,
        first_must_connect=True,
        retries_level=logging.INFO,
    )


def default_requester() -> str:
    """`user@host` of this process: who a cancel request says asked for it when the caller names nobody."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Client:
    """A controller's view of one group, over one broker session shared by everything it does.

    Subscriptions are counted uses of the session, so several handles may follow the same
    job; each handle gets its messages on a channel of its own (`BrokerSession.subscribe`).
    When the connection drops, the session connects again and subscribes to every filter in
    use before anything is published on it; calls that need the broker wait meanwhile.
    """

    def __init__(self, session: BrokerSession, topics: Topics, *, signer: Signer | None = None) -> None:
        self.session = session
        self.topics = topics
        self.signer = signer
        self.client_id = session.options.client_id
        self._sync_topic = f"{topics.prefix}/{topics.group}/clients/{self.client_id}/sync"

    @property
    def link(self) -> MqttLink:
        """The current connection. Errors: `LinkLost` while the client is reconnecting."""
        return self.session.link

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
    ) -> None:
        """Publish on the current link, as `BrokerSession.publish` does; `expiry` in seconds.

        Repeating a retained status or an empty retained payload changes nothing.
        """
        await self.session.publish(topic, payload, qos=qos, retain=retain, expiry=expiry)

    async def subscribe(self, filters: list[str], qos: int = 1) -> trio.MemoryReceiveChannel[InboundMessage]:
        """Receive every message on `filters` (retained ones first) until `unsubscribe`: `BrokerSession.subscribe`."""
        return await self.session.subscribe(filters, qos)

    async def unsubscribe(self, filters: list[str], receive: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        """Stop receiving on `receive`, once per channel `subscribe` gave, as `BrokerSession.release`."""
        await self.session.release(filters, receive)

    async def barrier(self) -> None:
        """Return once the broker has delivered the retained messages of every earlier subscription.

        Errors and cancellation: as `retained.barrier`.
        """
        await barrier(self.session, self._sync_topic)

    async def retained(self, topic_filter: str) -> list[InboundMessage]:
        """The messages the broker holds for `topic_filter` now (retained ones), in the order it sent them.

        Errors: `trio.TooSlowError` from `barrier`. Cancellation: nothing is left subscribed.
        """
        return await retained(self.session, topic_filter, self._sync_topic)

    async def submit(
        self,
        job: Mapping[str, Any],
        *,
        answer_within: float = ANSWER_WITHIN,
        events: bool = True,
        retry_after: float = RETRY_AFTER,
        attempts: int | None = None,
        ship: Path | None = None,
        ship_retention: int = DEFAULT_CONTENT_RETENTION,
        ship_progress: ShipProgress | None = None,
    ) -> JobHandle:
        """Publish a job and wait until a worker answers it (normally with `queued`).

        A `task_id` is made up when the job has none. The status topic is subscribed to
        before the first publish; any status of the job counts as the answer, also a
        retained one (a job of that `task_id` is known to the group already). Each time
        `retry_after` seconds pass without an answer, and whenever the connection was lost
        before one came, the same bytes are published again (same `task_id`, same
        signature: never re-signed), at most `attempts` times in all (default: as many as
        fit into `answer_within`), each repeat logged as a warning; `handle.attempts` says how many.

        With `ship`, that directory is packed and retained on the group's content topic of
        its digest (unless the broker holds it already), and the job names it as its
        `content`, before it is signed; `handle.shipment` says what was shipped.

        With a signer, the job is published as it is signed (a whole number as an integer),
        and a job with no canonical form to sign (a number beyond 2**53, NaN, a lone
        surrogate) raises `SignatureRefused` before anything is published.

        Errors: `NoWorkerAnswered` when no status comes within `answer_within` seconds;
        the broker then delivered the job to nobody, so nothing will run. `ValueError` for a
        `retry_after` that is not positive, `attempts` below 1 or a `task_id` that is not one.
        `ShipError` for a directory that cannot be packed.

        Cancellation: the handle is closed (its subscriptions removed) and not returned. A job
        already published is not withdrawn: a worker may run it. To retry, give the job a
        `task_id` of its own: a made-up one is new on each call, so the retry would be a second
        job; with the same `task_id`, a status the first publish got answers the retry at once.
        """
        most = most_attempts(answer_within, retry_after, attempts)
        task_id, payload, shipment = await job_payload(
            self, job, signer=self.signer, ship=ship, retention=ship_retention, progress=ship_progress
        )
        handle = JobHandle(self, task_id, events=events)
        handle.shipment = shipment
        try:
            with trio.move_on_after(answer_within) as waiting:
                await handle.open()
                await self._publish_until_answered(handle, payload, retry_after=retry_after, most=most)
        except BaseException:
            await handle.close()
            raise
        if waiting.cancelled_caught:
            await handle.close()
            raise no_worker_answered(self.topics, answer_within, handle.attempts, connected=self.session.connected)
        return handle

    async def _publish_until_answered(
        self, handle: JobHandle, payload: bytes, *, retry_after: float, most: int | None
    ) -> None:
        reason = ""
        while True:
            if most is None or handle.attempts < most:
                if handle.attempts:
                    of = "" if most is None else f" of {most}"
                    log.warning(
                        "%s; publishing task %s again (attempt %d%s)", reason, handle.task_id, handle.attempts + 1, of
                    )
                link = await self.session.current_link()
                connection = self.session.connections
                handle.attempts += 1
                # A link that drops in the middle is replaced, and the job published again on it.
                with suppress(LinkLost):
                    await link.publish(self.topics.tasks, payload, qos=2)
                within = retry_after
            else:
                connection, within = self.session.connections, math.inf
            outcome = await handle.wait_answer(within, connection)
            if outcome == "answered":
                return
            if outcome == "reconnected":
                # The new link's subscriptions bring a status the job got meanwhile.
                with suppress(trio.TooSlowError):
                    await self.barrier()
                handle.take_arrived()
                if handle.latest is not None:
                    return
                reason = "the connection to the broker was lost before a worker answered"
            else:
                reason = f"no worker answered within {retry_after:g}s"

    async def follow(self, task_id: str, *, events: bool = True) -> JobHandle:
        """A handle on a job, wherever it is now; its retained status comes first, if any.

        With `events=False` only statuses are received, which spares the broker and this
        client a busy job's live events. Errors: `ValueError` for a `task_id` that is not one.

        Cancellation: the handle is closed (its routes and subscriptions removed) before the
        cancellation goes on; nothing is left behind, and retrying is safe.
        """
        handle = JobHandle(self, task_id, events=events)
        try:
            await handle.open()
        except BaseException:
            await handle.close()
            raise
        return handle

    async def status(self, task_id: str) -> dict[str, Any] | None:
        """The job's retained status, or None if the broker holds none.

        Errors: `trio.TooSlowError` from `barrier`; `ValueError` for a `task_id` that is not one.

        Cancellation: the handle is closed either way. Nothing changes at the broker; safe to retry.
        """
        handle = await self.follow(task_id)
        try:
            await self.barrier()
            handle.take_arrived()
            return handle.latest
        finally:
            await handle.close()

    async def cancel(self, task_id: str, *, reason: str | None = None, requested_by: str | None = None) -> None:
        """Ask the group's workers to cancel job `task_id` (signed, with a `signer`); do not wait for it to end.

        `requested_by` defaults to `default_requester()`. Errors: as `publish`; `ValueError` for a
        `task_id` that is not one.

        Cancellation: as `publish`: the request may or may not have been published, and a
        retry publishes another request (with a signature of its own) for the same job.
        """
        body = {"reason": reason, "requested_by": requested_by or default_requester()}
        request = {key: value for key, value in body.items() if value is not None}
        topic = self.topics.cancel(checked_task_id(task_id))
        if self.signer is not None:
            request = self.signer.sign(topic, request)
        await self.publish(topic, json.dumps(request).encode(), qos=1)

    async def forget(self, task_id: str) -> None:
        """Clear the job's retained status (and its record) from the broker.

        Errors: as `publish`; `ValueError` for a `task_id` that is not one.

        Cancellation: as `publish`: the status may or may not be cleared yet. Safe to retry:
        clearing it twice is clearing it once.
        """
        checked_task_id(task_id)
        await self.publish(self.topics.status(task_id), b"", qos=1, retain=True)
        await self.publish(self.topics.record(task_id), b"", qos=1, retain=True)

    async def record(self, task_id: str) -> dict[str, Any] | None:
        """The finished job's record (final status, events, Ansible's output), or None if the broker holds none.

        Errors: `ClientError` when the retained payload is not a readable record, or is not
        this job's: its `task_id` and its status's must both be `task_id`; `trio.TooSlowError`
        from `barrier`; `ValueError` for a `task_id` that is not one.

        Cancellation: the record subscription is removed (as by `unsubscribe`); nothing changes
        at the broker, and retrying is safe.
        """
        topic = self.topics.record(checked_task_id(task_id))
        held = await self.retained(topic)
        return job_record(topic, task_id, held[-1].payload if held else b"")

    async def jobs(
        self, *, state: str | None = None, playbook: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The group's jobs from their retained statuses, newest first, filtered as asked.

        `state` is one state or a comma-separated list; `playbook` matches exactly or as a
        shell-style pattern (`deploy/*`); `since` keeps the jobs created (else started) then or later.

        Errors: `trio.TooSlowError` from `barrier`.

        Cancellation: the status subscription is removed (as by `unsubscribe`); nothing is
        left behind, and it is safe to call again.
        """
        found: dict[str, dict[str, Any]] = {}
        for message in await self.retained(self.topics.status_subscription):
            task_id = self.topics.task_id_of_status(message.topic)
            if task_id is None:
                continue
            status = json_object(message.payload)
            if status is None:
                found.pop(task_id, None)
            else:
                found[task_id] = status
        return select_jobs(list(found.values()), state=state, playbook=playbook, since=since)

    async def wait_for_worker(self, worker_id: str | None = None) -> dict[str, Any]:
        """Wait until a worker of the group (or the one named) says it is online; its presence.

        Publishing a job before any worker subscribed would reach nobody: a controller
        that starts workers itself waits here first. Put a bound on it at the call.

        Errors: `ClientError` when the client ends meanwhile.

        Cancellation: the presence subscription is removed (as by `unsubscribe`); nothing is
        left behind, and it is safe to call again.
        """
        topic_filter = self.topics.worker(worker_id) if worker_id else self.topics.workers_subscription
        receive = await self.subscribe([topic_filter])
        try:
            async for message in receive:
                presence = json_object(message.payload)
                if presence is not None and presence.get("state") == "online":
                    return presence
            raise ClientError("the connection to the broker was closed")
        finally:
            await self.unsubscribe([topic_filter], receive)

    async def workers(self) -> list[dict[str, Any]]:
        """The retained presence messages of the group's workers, sorted by worker id.

        Errors: `trio.TooSlowError` from `barrier`.

        Cancellation: the presence subscription is removed (as by `unsubscribe`); nothing is
        left behind, and it is safe to call again.
        """
        found: dict[str, dict[str, Any]] = {}
        for message in await self.retained(self.topics.workers_subscription):
            presence = json_object(message.payload)
            if presence is not None:
                found[message.topic.rsplit("/", 1)[-1]] = presence
        return [found[key] for key in sorted(found)]

    async def catalogue(self) -> TemplateCatalogue | None:
        """The group's template catalogue as the broker holds it, or None when no worker published one.

        Errors: `trio.TooSlowError` from `barrier`; `CatalogueUnreadable` for a copy that is
        not a catalogue. Cancellation: nothing is left subscribed.
        """
        # Here, not at the top: the protocol's models load pydantic, which most commands never need.
        from pydantic import ValidationError

        from ansible_worker.protocol.group_messages import TemplateCatalogue

        found = await self.retained(self.topics.templates)
        if not found or not found[-1].payload:
            return None
        try:
            return TemplateCatalogue.model_validate_json(found[-1].payload)
        except ValidationError as exc:
            raise CatalogueUnreadable(
                f"the template catalogue on the broker cannot be read ({exc.error_count()} problems)"
            ) from None


@asynccontextmanager
async def open_client(target: Target, *, reconnect_for: float = RECONNECT_FOR) -> AsyncIterator[Client]:
    """Connect to the broker; the client and every handle stop working when the block ends.

    When the connection drops (a broker restart), the client connects again with a short
    backoff and subscribes again to everything in use; calls that need the broker wait
    meanwhile. `reconnect_for=0` gives up at once, as a client of a single connection.

    Errors: `ClientError` when the broker cannot be reached at first, or not again within
    `reconnect_for` seconds after the connection dropped.

    Cancellation: while connecting, the attempt is abandoned with the link's asyncio loop.
    Once the block runs, cancelling it ends the client: the link is closed with a DISCONNECT
    (shielded and bounded, so the broker sends no will). A job already published runs on.
    """
    # A client id of its own for every connection: the broker disconnects the older of two
    # connections that share one, so one Target may serve several clients at once.
    options = dataclasses.replace(target.link, client_id=new_client_id())
    session = BrokerSession(options, reconnect=reconnect_policy(reconnect_for))
    try:
        with unwrap_lone_errors():
            async with trio.open_nursery() as nursery:
                await nursery.start(session.serve)
                yield Client(session, target.topics, signer=target.signer)
                nursery.cancel_scope.cancel()
    except GaveUp as exc:
        raise ClientError(str(exc)) from exc
    except LinkError as exc:
        raise ClientError(f"broker {target.link.host}:{target.link.port}: {exc}") from exc
