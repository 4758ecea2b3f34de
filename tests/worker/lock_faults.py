"""What the tests of host locks under faults share: worker settings, waits on what a worker says, ways to hurt it.

A worker's link drops because it is stopped (SIGSTOP) past its keepalive; a broker restarts
with its retained messages (persistence); a worker's wall clock is set behind by a launcher
that wraps `datetime.now` (the broker cannot set a clock).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.client import Client
from ansible_worker.ops.config import Settings
from ansible_worker.worker.phases import Phase
from ansible_worker.worker.service import Worker
from testing.broker import Broker
from tests.conftest import ANSIBLE_PLAYBOOK, make_settings, processes_mentioning, wait_online, worker_process

HEARTBEAT = 1
LOST_AFTER = 10
# Ansible's own pace on a loaded machine: a playbook's start, a reconnection.
SLACK = 30


def process_config(
    tmp_path: Path, broker: Broker, playbook_dir: Path, group: str, worker_id: str, **worker: Any
) -> Path:
    """A worker process's config: host locks on, heartbeats every second, a keepalive of 5 s (the least)."""
    values = {
        "group_name": group,
        "worker_id": worker_id,
        "playbook_directory": str(playbook_dir),
        "ansible_playbook_path": ANSIBLE_PLAYBOOK,
        "heartbeat_interval": HEARTBEAT,
        "lost_after": LOST_AFTER,
        "status_interval": 0.1,
        "kill_grace": 2,
        "drain_timeout": 600,
        **worker,
    }
    path = tmp_path / f"{worker_id}.json"
    mqtt = {"host": "127.0.0.1", "port": broker.port, "keepalive": 5}
    path.write_text(json.dumps({"mqtt": mqtt, "worker": values}))
    return path


async def wait_presence(client: Client, worker_id: str, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first presence of `worker_id` (the retained one included) that passes `test`."""
    topic = client.topics.worker(worker_id)
    receive = await client.subscribe([topic])
    try:
        with trio.fail_after(SLACK):
            async for message in receive:
                presence = json.loads(message.payload) if message.payload else {}
                if test(presence):
                    return presence
    finally:
        await client.unsubscribe([topic], receive)
    raise AssertionError(f"no presence of {worker_id} came")


def lost_link(presence: dict[str, Any]) -> bool:
    """The will: the broker saw the worker's link die."""
    return presence.get("state") == "offline" and presence.get("stopped") == "lost"


async def wait_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Until this process has logged `text`."""
    with trio.fail_after(SLACK):
        while not any(text in record.getMessage() for record in caplog.records):  # noqa: ASYNC110 - logging has no event
            await trio.sleep(0.1)


async def wait_settled(worker: Worker, task_id: str) -> None:
    """Until the job has ended on `worker` (its terminal status may not be out yet)."""
    with trio.fail_after(SLACK):
        while worker.jobs.phase(task_id) not in (None, Phase.SETTLING):  # noqa: ASYNC110 - the table has no event for it
            await trio.sleep(0.1)


def waits_for(statuses: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The statuses among `statuses` whose `waiting_for` names `key`."""
    return [status for status in statuses if key in (status.get("waiting_for") or {})]


async def wait_sleeping(seconds: str) -> list[str]:
    """The `sleep` of a stamp job, once it runs."""
    with trio.fail_after(SLACK):
        while not (found := processes_mentioning(f"sleep {seconds}")):  # noqa: ASYNC110 - /proc has no event
            await trio.sleep(0.1)
    return found


def end_sleep(sleeping: list[str]) -> None:
    """End the `sleep` of a stamp job: its playbook fails at once and the job ends."""
    for line in sleeping:
        os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


@asynccontextmanager
async def persistent_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    directory = tmp_path / "persistent-broker"
    directory.mkdir()
    broker = Broker(directory, persistence=directory / "db")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def steady_settings(broker: Broker, playbook_dir: Path, group: str, **worker: Any) -> Settings:
    values = {"lost_after": LOST_AFTER, **worker}
    return make_settings(
        broker.port,
        playbook_dir,
        group,
        worker_id="steady",
        host_locks=True,
        heartbeat_interval=HEARTBEAT,
        drain_timeout=600,
        **values,
    )


async def killed(tmp_path: Path, broker: Broker, playbook_dir: Path, group: str, client: Client) -> None:
    """Start worker `gone` and kill it: the broker keeps its will."""
    config = process_config(tmp_path, broker, playbook_dir, group, "gone")
    async with worker_process("run", "-c", str(config)) as gone:
        await wait_online(client, "gone")
        gone.process.kill()
        await wait_presence(client, "gone", lost_link)


# Ten minutes behind: a clock nobody set, on a machine without NTP.
SKEW_SECONDS = 600
SKEWED = f"""\
#!{sys.executable}
# An ansible-worker whose wall clock is {SKEW_SECONDS} s behind the others'; its monotonic clock is right.
import datetime
import sys

_real = datetime.datetime


class _Behind(_real):
    @classmethod
    def now(cls, tz=None):
        return _real.now(tz) - datetime.timedelta(seconds={SKEW_SECONDS})


datetime.datetime = _Behind
from ansible_worker.cli import main  # noqa: E402

sys.exit(main())
"""
