"""What the history tests share: statuses and records as a worker publishes them, an archiver on a test broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import trio

from ansible_worker.history.archiver import Archiver, serve_archiver
from ansible_worker.history.reader import History, open_history
from ansible_worker.mqtt.link import LinkOptions, MqttLink, open_mqtt_link
from ansible_worker.protocol.records import encode_record, record_document
from ansible_worker.protocol.topics import Topics
from testing.broker import Broker

TOPICS = Topics("ansible", "hist")


def status(task_id: str, state: str = "success", *, began: datetime | None = None, **extra: Any) -> dict[str, Any]:
    """A status as a worker publishes it."""
    began = began or datetime.now(UTC)
    ended = state in ("success", "failed", "cancelled", "timeout")
    return {
        "task_id": task_id,
        "state": state,
        "created_at": began.isoformat().replace("+00:00", "Z"),
        "started_at": None if state == "queued" else (began + timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
        "completed_at": (began + timedelta(seconds=5)).isoformat().replace("+00:00", "Z") if ended else None,
        "playbook": "site.yml",
        "worker_id": "w1",
        "tasks_total": 3,
        **extra,
    }


def record(final: dict[str, Any], hosts: tuple[str, ...] = ("web1",), output: str = "PLAY [all]\n") -> bytes:
    """A record as a worker publishes it: compressed, holding `final` and one event per host."""
    events = [{"event": "runner_on_ok", "host": host, "task": "ping", "seq": i} for i, host in enumerate(hosts, 1)]
    document = record_document(final, events, output, output_bytes=len(output), events_total=len(events))
    return encode_record(document, 1_000_000).payload


@asynccontextmanager
async def publisher(broker: Broker) -> AsyncIterator[MqttLink]:
    """A plain link to the broker, as a worker's would be."""
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="pub-" + uuid.uuid4().hex[:8])
    async with open_mqtt_link(options) as link:
        yield link


async def publish_status(link: MqttLink, value: dict[str, Any] | bytes, task_id: str | None = None) -> None:
    """Retain a status on its job's topic (or on `task_id`'s, to lie about it)."""
    payload = value if isinstance(value, bytes) else json.dumps(value).encode()
    name = task_id or (value["task_id"] if isinstance(value, dict) else "")
    await link.publish(TOPICS.status(name), payload, qos=1, retain=True)


@asynccontextmanager
async def running_archiver(broker: Broker, url: str, **options: Any) -> AsyncIterator[tuple[History, Archiver]]:
    """An archiver of group `hist` on `broker`, writing to `url`, until the block ends."""
    link = LinkOptions(host="127.0.0.1", port=broker.port, client_id="archiver-" + uuid.uuid4().hex[:8])
    async with open_history(url, migrate=True) as history, trio.open_nursery() as nursery:
        archiver = await nursery.start(partial(serve_archiver, history, link, TOPICS, **options))
        yield history, archiver
        nursery.cancel_scope.cancel()


async def wait_until(check: Callable[[], Awaitable[bool]], within: float = 20) -> None:
    """Return once `check()` is true; fail after `within` seconds."""
    with trio.fail_after(within):
        # The condition is in a database or a counter that no event announces: look again, within a bound.
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.05)
