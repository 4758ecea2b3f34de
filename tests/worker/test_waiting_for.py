"""A queued job says why it waits: its place in the queue and the worker's concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Broker, make_settings, open_controller, running_worker
from tests.worker.test_host_locks import waiting_status


def sleeper(task_id: str, seconds: float) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "playbook": "sleep.yml",
        "inventory": "inventory.ini",
        "extra_vars": {"seconds": seconds},
        "locks": [],
    }


async def test_queued_jobs_say_their_place_and_move_up(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="w", concurrency=1)),
    ):
        await controller.submit(sleeper("one", 3))
        await controller.wait_for("one", {"running"})
        await controller.submit(sleeper("two", 1))
        await controller.submit(sleeper("three", 1))
        two = await waiting_status(controller, "two", "queue_position")
        three = await waiting_status(controller, "three", "queue_position")
        for name in ("one", "two", "three"):
            assert (await controller.wait_terminal(name))["state"] == "success"
    assert two["state"] == "queued"
    assert two["waiting_for"] == {"queue_position": 1, "concurrency": 1}
    assert three["waiting_for"] == {"queue_position": 2, "concurrency": 1}
    # Once "two" left the queue, "three" was told it is next.
    positions = [
        status["waiting_for"]["queue_position"]
        for status in controller.statuses["three"]
        if status["state"] == "queued" and status.get("waiting_for")
    ]
    assert positions[-1] == 1
    assert controller.terminal_statuses("three")[0]["waiting_for"] is None
