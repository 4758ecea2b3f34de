"""Schedules on a real broker with three workers: each tick runs once in the group; the clock is the test's."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
import yaml

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.templates.loading import load_templates
from ansible_worker.templates.schedules import scheduled_entries
from ansible_worker.worker.service import Worker
from tests.conftest import Broker, client_for, make_settings, open_controller

START = datetime(2026, 12, 24, 11, 59, 30, tzinfo=UTC)


class SteppedClock:
    """A wall clock that moves only when the test moves it; every worker of the test shares it."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._moved = trio.Event()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, moment: datetime) -> None:
        while self._now < moment:
            await self._moved.wait()

    def move_to(self, moment: datetime) -> None:
        self._now = moment
        self._moved.set()
        self._moved = trio.Event()


async def test_three_workers_run_each_tick_once_and_a_one_time_entry_once(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    (playbook_dir / "templates.yml").write_text(
        yaml.safe_dump(
            {
                "templates": {
                    "minutely": {
                        "playbook": "quick.yml",
                        "inventory": "one_host.ini",
                        "schedule": [{"cron": "* * * * *"}],
                    },
                    "once": {
                        "playbook": "quick.yml",
                        "inventory": "one_host.ini",
                        "schedule": [{"at": "2026-12-24T12:01:30Z"}],
                    },
                }
            }
        )
    )
    minutely, once = scheduled_entries(load_templates(playbook_dir, "templates.yml"))
    clock = SteppedClock(START)
    async with open_controller(broker, group) as controller, trio.open_nursery() as nursery, AsyncExitStack() as stack:
        workers = []
        for number in range(3):
            settings = make_settings(
                broker.port, playbook_dir, group, templates="templates.yml", worker_id=f"tick-{number}"
            )
            worker = Worker(settings, clock=clock)
            await nursery.start(worker.serve)
            stack.callback(worker.request_shutdown)
            workers.append(worker)
        for worker in workers:
            assert worker.scheduler is not None
            with trio.fail_after(15):
                await worker.scheduler.ready.wait()
        ticks = [START + timedelta(seconds=30 + 60 * n) for n in range(3)]
        for tick in ticks:
            clock.move_to(tick)
            await controller.wait_terminal(minutely.task_id(tick))
        clock.move_to(ticks[-1] + timedelta(seconds=45))
        await controller.wait_terminal(once.task_id(datetime(2026, 12, 24, 12, 1, 30, tzinfo=UTC)))
        # Every worker fired every tick: give the losers' copies time to show any second run.
        await controller.sync()

    run_ids = [minutely.task_id(tick) for tick in ticks] + [once.task_id(datetime(2026, 12, 24, 12, 1, 30, tzinfo=UTC))]
    for task_id in run_ids:
        terminal = controller.terminal_statuses(task_id)
        assert [status["state"] for status in terminal] == ["success"], (task_id, terminal)
        running = {status["worker_id"] for status in controller.statuses[task_id] if status["state"] == "running"}
        assert len(running) == 1, (task_id, running)
    scheduled = {task_id for task_id in controller.statuses if task_id.startswith(("minutely.", "once."))}
    assert scheduled == set(run_ids)


async def catalogue_where(
    receive: trio.MemoryReceiveChannel[InboundMessage], wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first catalogue on `receive` that is `wanted`."""
    with trio.fail_after(30):
        async for message in receive:
            catalogue: dict[str, Any] = json.loads(message.payload)
            if wanted(catalogue):
                return catalogue
    raise AssertionError("the subscription ended")


async def test_ticks_with_no_worker_online_are_missed_not_run_late(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    (playbook_dir / "templates.yml").write_text(
        yaml.safe_dump(
            {
                "templates": {
                    "minutely": {
                        "playbook": "quick.yml",
                        "inventory": "one_host.ini",
                        "schedule": [{"cron": "* * * * *"}],
                    }
                }
            }
        )
    )
    (entry,) = scheduled_entries(load_templates(playbook_dir, "templates.yml"))
    clock = SteppedClock(START)
    settings = make_settings(broker.port, playbook_dir, group, templates="templates.yml")
    first_tick = START + timedelta(seconds=30)
    async with open_controller(broker, group) as controller, client_for(broker, group) as client:
        catalogues = await client.subscribe([client.topics.templates])
        async with trio.open_nursery() as nursery:
            worker = Worker(settings, clock=clock)
            await nursery.start(worker.serve)
            assert worker.scheduler is not None
            with trio.fail_after(15):
                await worker.scheduler.ready.wait()
            clock.move_to(first_tick)
            await controller.wait_terminal(entry.task_id(first_tick))
            await catalogue_where(
                catalogues, lambda c: c["templates"]["minutely"]["schedule"][0]["last_run"] is not None
            )
            worker.request_shutdown()
        # Nobody is online for the next two ticks.
        clock.move_to(first_tick + timedelta(minutes=2, seconds=10))
        async with trio.open_nursery() as nursery:
            worker = Worker(settings, clock=clock)
            await nursery.start(worker.serve)
            shown = await catalogue_where(
                catalogues, lambda c: bool(c["templates"]["minutely"]["schedule"][0]["missed"])
            )
            assert worker.scheduler is not None
            with trio.fail_after(15):
                await worker.scheduler.ready.wait()
            clock.move_to(first_tick + timedelta(minutes=3))
            await controller.wait_terminal(entry.task_id(first_tick + timedelta(minutes=3)))
            await controller.sync()
            worker.request_shutdown()
    schedule = shown["templates"]["minutely"]["schedule"][0]
    missed = [first_tick + timedelta(minutes=1), first_tick + timedelta(minutes=2)]
    assert schedule["missed"] == [moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in missed]
    assert schedule["last_task_id"] == entry.task_id(first_tick)
    for moment in missed:
        assert entry.task_id(moment) not in controller.statuses


async def test_a_catalogue_from_long_ago_costs_a_bounded_look_back(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    """A retained catalogue saying the group last spoke ten years ago (stale, or forged): a week is looked at."""
    (playbook_dir / "templates.yml").write_text(
        yaml.safe_dump({"templates": {"minutely": {"playbook": "quick.yml", "schedule": [{"cron": "* * * * *"}]}}})
    )
    (entry,) = scheduled_entries(load_templates(playbook_dir, "templates.yml"))
    old = {"worker_id": "gone", "published_at": "2016-12-24T12:00:00Z", "templates_only": False, "templates": {}}
    clock = SteppedClock(START)
    async with client_for(broker, group) as client:
        await client.publish(client.topics.templates, json.dumps(old).encode(), qos=1, retain=True)
        catalogues = await client.subscribe([client.topics.templates])
        async with trio.open_nursery() as nursery:
            worker = Worker(make_settings(broker.port, playbook_dir, group, templates="templates.yml"), clock=clock)
            await nursery.start(worker.serve)
            shown = await catalogue_where(catalogues, lambda c: c["worker_id"] != "gone")
            worker.request_shutdown()
    missed = [datetime.fromisoformat(moment) for moment in shown["templates"]["minutely"]["schedule"][0]["missed"]]
    # Counted back from the start (at most 1,000 within the week before it): the newest ten are the last minutes.
    assert missed == [START - timedelta(seconds=30 + 60 * n) for n in range(9, -1, -1)]
    assert entry.name == shown["templates"]["minutely"]["schedule"][0]["entry"]
