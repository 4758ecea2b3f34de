"""Publish the group's template catalogue, retained, when the worker starts and whenever it changes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import trio
from pydantic import ValidationError

from ansible_worker.mqtt.link import LinkError, PublishRefused
from ansible_worker.mqtt.retained import retained
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.group_messages import TemplateCatalogue
from ansible_worker.protocol.topics import Topics

log = logging.getLogger(__name__)

# A publish that failed is tried again after this long, on whatever link is up then.
RETRY_SECONDS = 1.0


class CataloguePublisher:
    """One task that keeps the newest catalogue retained on `<prefix>/<group>/templates`.

    `changed` asks for a copy (the first too: the scheduler asks once it has learnt the
    group's history, so that a starting worker never replaces it with an empty one); copies
    asked for while one is being published coalesce into one. The catalogue is built when it
    is sent, from `build(now)`.
    """

    def __init__(self, session: BrokerSession, topics: Topics, build: Callable[[datetime], TemplateCatalogue]) -> None:
        self.session = session
        self.topics = topics
        self.build = build
        self._wanted = trio.Event()

    def changed(self) -> None:
        """Publish the catalogue again soon (a tick ran, or was missed)."""
        self._wanted.set()

    async def serve(self, now: Callable[[], datetime]) -> None:
        """Publish after each change, until cancelled.

        Cancellation: a copy in flight may or may not reach the broker; the next start publishes again.
        """
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            payload = self.build(now()).model_dump_json().encode()
            try:
                await self.session.publish(self.topics.templates, payload, qos=1, retain=True)
            except PublishRefused as exc:
                # The broker's ACL: the same copy would be refused again; the next change tries.
                log.error("the broker refused the template catalogue on %s: %s", self.topics.templates, exc)
            except LinkError as exc:
                log.warning("could not publish the template catalogue (trying again): %s", exc)
                self._wanted.set()
                await trio.sleep(RETRY_SECONDS)


async def read_catalogue(session: BrokerSession, topics: Topics, *, client_id: str) -> TemplateCatalogue | None:
    """The catalogue the broker holds for the group, or None (none, or one this worker cannot read).

    Errors: `trio.TooSlowError` when the broker does not answer within the barrier's bound.
    Cancellation: nothing is left subscribed.
    """
    found = await retained(session, topics.templates, topics.client_sync(client_id, "catalogue"))
    if not found or not found[-1].payload:
        return None
    try:
        return TemplateCatalogue.model_validate_json(found[-1].payload)
    except ValidationError as exc:
        log.warning("the retained template catalogue cannot be read (%d problems): ignored", exc.error_count())
        return None
