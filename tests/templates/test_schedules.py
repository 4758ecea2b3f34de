"""Schedules on a real broker with three workers: each tick runs once in the group; the clock is the test's."""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
import yaml

from ansible_worker.templates.loading import load_templates
from ansible_worker.templates.schedules import scheduled_entries
from ansible_worker.worker.service import Worker
from tests.conftest import Broker, make_settings, open_controller

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
            with trio.fail_after(15):
                await worker.session.wait_connected()
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
