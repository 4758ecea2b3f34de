"""The broker goes away and comes back: jobs keep running and their statuses still arrive."""

from __future__ import annotations

from pathlib import Path

import trio

from ansible_worker.worker import Worker
from tests.conftest import Broker, make_settings, open_controller, running_worker

QUICK = {"playbook": "quick.yml", "inventory": "one_host.ini"}


async def wait_until_disconnected(worker: Worker) -> None:
    with trio.fail_after(15):
        await worker.session.wait_disconnected()


async def test_worker_waits_for_a_broker_that_is_down_at_start(broker: Broker, playbook_dir: Path, group: str) -> None:
    broker.stop()
    settings = make_settings(broker, playbook_dir, group)
    worker = Worker(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        assert not worker.session.connected
        broker.start()
        with trio.fail_after(15):
            await worker.session.wait_connected()
        async with open_controller(broker, group) as controller:
            await controller.submit({"task_id": "late-broker", **QUICK})
            final = await controller.wait_terminal("late-broker")
        worker.request_shutdown()
    assert final["state"] == "success"


async def test_broker_restart_while_idle(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker, playbook_dir, group)
    async with running_worker(settings) as worker:
        broker.stop()
        await wait_until_disconnected(worker)
        broker.start()
        with trio.fail_after(15):
            await worker.session.wait_connected()
        async with open_controller(broker, group) as controller:
            await controller.submit({"task_id": "after-restart", **QUICK})
            final = await controller.wait_terminal("after-restart")
    assert final["state"] == "success"
    assert worker.session.reconnects >= 1


async def start_then_lose_broker(broker: Broker, group: str, worker: Worker, task_id: str, seconds: int) -> None:
    """Start a sleeping job, see it running, then stop the broker and see the worker notice."""
    job = {"task_id": task_id, "playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": seconds}}
    async with open_controller(broker, group) as controller:
        await controller.submit(job)
        await controller.wait_for(task_id, {"running"})
    broker.stop()
    await wait_until_disconnected(worker)


async def test_job_finishing_while_broker_is_down_reports_after_it_returns(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(broker, playbook_dir, group)
    async with running_worker(settings) as worker:
        await start_then_lose_broker(broker, group, worker, "outage", seconds=2)
        # The job goes on without the broker and ends while it is away.
        with trio.fail_after(60):
            await worker.dispatcher.jobs["outage"].done.wait()
        assert worker.outbox.pending_count >= 1
        broker.start()
        # Mosquitto here keeps nothing across a restart, so what arrives was sent afterwards.
        async with open_controller(broker, group) as controller:
            final = await controller.wait_terminal("outage", within=30)
    assert final["state"] == "success"
    assert final["tasks_total"] == 1


async def test_broker_restart_while_job_runs(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker, playbook_dir, group)
    async with running_worker(settings) as worker:
        await start_then_lose_broker(broker, group, worker, "bounce", seconds=4)
        broker.start()
        async with open_controller(broker, group) as controller:
            final = await controller.wait_terminal("bounce", within=60)
        assert "bounce" not in worker.dispatcher.jobs
    assert final["state"] == "success"
