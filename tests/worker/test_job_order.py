"""One worker's queue keeps the order requests arrived in, while their claims go out side by side.

A claim may take a while (the retained-status check of an older task_id is a round trip);
the job behind it waits for its turn, and a job refused meanwhile does not let the next one
jump ahead. A job taken over by another worker while it waits for its turn is left to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from ansible_worker.worker.service import Worker
from tests.conftest import Broker, Controller, make_settings, open_controller, running_worker
from tests.worker.group_jobs import QUICK, append_job, run_count


def slow_status_read(worker: Worker, task_id: str, seconds: float) -> None:
    """The retained-status check of `task_id` takes `seconds` more: a broker slow to answer it."""
    read = worker.claimer.read_status
    assert read is not None

    async def slower(asked: str) -> bytes | None:
        if asked == task_id:
            await trio.sleep(seconds)
        return await read(asked)

    worker.claimer.read_status = slower


def started_in_order(controller: Controller, task_ids: list[str]) -> list[str]:
    """`task_ids` in the order their jobs started."""
    started = {
        task_id: next(s["started_at"] for s in controller.statuses[task_id] if s["state"] == "running")
        for task_id in task_ids
    }
    return sorted(task_ids, key=started.__getitem__)


async def test_one_worker_starts_jobs_in_the_order_they_were_sent(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(broker.port, playbook_dir, group, concurrency=1)
    task_ids = [f"order-{index}" for index in range(8)]
    async with open_controller(broker, group) as controller, running_worker(settings):
        for task_id in task_ids:
            await controller.submit({"task_id": task_id, **QUICK})
        finals = [await controller.wait_terminal(task_id, within=120) for task_id in task_ids]
    assert all(final["state"] == "success" for final in finals)
    assert started_in_order(controller, task_ids) == task_ids


async def test_a_copy_refused_between_two_jobs_keeps_their_order(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(broker.port, playbook_dir, group, concurrency=1)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        # "ran-before" ran long ago: its claim lapsed, its status is kept; a copy is refused.
        old = {"task_id": "ran-before", "state": "success", "worker_id": "elsewhere"}
        await controller.link.publish(
            controller.topics.status("ran-before"), json.dumps(old).encode(), qos=1, retain=True
        )
        slow_status_read(worker, "first", 3)
        for task_id in ("first", "ran-before", "third"):
            await controller.submit({"task_id": task_id, **QUICK})
        for task_id in ("first", "third"):
            await controller.wait_terminal(task_id, within=60)
    assert started_in_order(controller, ["first", "third"]) == ["first", "third"]


async def test_a_job_taken_over_while_it_waits_its_turn_is_left_to_the_taker(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    settings = make_settings(broker.port, playbook_dir, group, worker_id="slow", concurrency=2)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        slow_status_read(worker, "first", 6)
        await controller.submit({"task_id": "first", **QUICK})
        await controller.submit(append_job("second", tmp_path))
        held = await wait_held(lambda: worker.claims.holder("second"), "slow")
        # A survivor's takeover, as when this worker was judged lost meanwhile (frozen, cut off).
        takeover = {
            "state": "claimed",
            "worker_id": "survivor",
            "claim": "feedfacefeedface",
            "takes_over": held,
            "lost_worker": "slow",
            "expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="milliseconds"),
        }
        await controller.link.publish(
            controller.topics.claim("second"), json.dumps(takeover).encode(), qos=1, retain=True
        )
        await wait_held(lambda: worker.claims.holder("second"), "survivor")
        await controller.wait_terminal("first", within=60)
        # Its turn has come and gone: whatever it was to do with "second" is done.
        with trio.fail_after(30):
            while worker.jobs.phase("second") is not None:  # noqa: ASYNC110 - the table's state, bounded
                await trio.sleep(0.05)
        await controller.sync()
    assert run_count("second", tmp_path) == 0
    assert all(status.get("worker_id") != "slow" for status in controller.statuses.get("second", []))
    holder = worker.claims.holder("second")
    assert holder is not None
    assert holder.claim_id == "feedfacefeedface"
    assert holder.started_at is None


async def wait_held(holder: Callable[[], Any], worker_id: str) -> str:
    """The claim id that holds the job, once `worker_id`'s claim does."""
    with trio.fail_after(10):
        while (claim := holder()) is None or claim.worker_id != worker_id:  # noqa: ASYNC110 - the claim book, bounded
            await trio.sleep(0.05)
    return str(claim.claim_id)
