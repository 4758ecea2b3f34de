"""The broker goes away and comes back: jobs keep running and their statuses still arrive."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from ansible_worker.worker.service import Worker
from tests.conftest import Broker, make_settings, open_controller, running_worker

QUICK = {"playbook": "quick.yml", "inventory": "one_host.ini"}


async def wait_until_disconnected(worker: Worker) -> None:
    with trio.fail_after(15):
        await worker.session.wait_disconnected()


async def test_worker_waits_for_a_broker_that_is_down_at_start(broker: Broker, playbook_dir: Path, group: str) -> None:
    broker.stop()
    settings = make_settings(broker.port, playbook_dir, group)
    worker = Worker(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
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
    settings = make_settings(broker.port, playbook_dir, group)
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
    settings = make_settings(broker.port, playbook_dir, group)
    async with running_worker(settings) as worker:
        await start_then_lose_broker(broker, group, worker, "outage", seconds=2)
        # The job goes on without the broker and ends while it is away.
        entry = worker.jobs.entry("outage")
        assert entry is not None
        assert entry.job is not None
        with trio.fail_after(60):
            await entry.job.done.wait()
        assert worker.statuses.pending_count >= 1
        broker.start()
        # Mosquitto here keeps nothing across a restart, so what arrives was sent afterwards.
        async with open_controller(broker, group) as controller:
            final = await controller.wait_terminal("outage", within=30)
    assert final["state"] == "success"
    assert final["tasks_total"] == 1


async def test_broker_restart_while_job_runs(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group)
    async with running_worker(settings) as worker:
        await start_then_lose_broker(broker, group, worker, "bounce", seconds=4)
        broker.start()
        async with open_controller(broker, group) as controller:
            final = await controller.wait_terminal("bounce", within=60)
        assert not worker.jobs.holds("bounce")
    assert final["state"] == "success"


async def _read_packet(stream: trio.SocketStream) -> tuple[int, bytes]:
    """One MQTT packet: its type nibble and its body."""
    header = await stream.receive_some(1)
    if not header:
        raise EOFError
    length, shift = 0, 0
    while True:
        byte = (await stream.receive_some(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        body += await stream.receive_some(length - len(body))
    return header[0] >> 4, body


async def _refusing_broker(stream: trio.SocketStream) -> None:
    """Accept any MQTT 5 connection, then answer every SUBSCRIBE with 0x87 (not authorized).

    Mosquitto 2.0 grants every subscription and applies its ACL on delivery instead, so it
    cannot produce this fault on demand.
    """
    async with stream:
        try:
            while True:
                kind, body = await _read_packet(stream)
                if kind == 1:  # CONNECT
                    await stream.send_all(bytes([0x20, 3, 0, 0, 0]))
                elif kind == 8:  # SUBSCRIBE: packet id, then properties and topics
                    await stream.send_all(bytes([0x90, 4, body[0], body[1], 0, 0x87]))
                elif kind == 12:  # PINGREQ
                    await stream.send_all(bytes([0xD0, 0]))
                elif kind == 14:  # DISCONNECT
                    return
        except (EOFError, IndexError, trio.BrokenResourceError):
            return


async def test_worker_survives_a_broker_that_refuses_the_subscription(
    playbook_dir: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as servers:
        (listener,) = await servers.start(partial(trio.serve_tcp, _refusing_broker, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        settings = make_settings(port, playbook_dir, group)
        worker = Worker(settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            # Three refusals, each followed by a backoff and a new connection: still alive.
            with trio.fail_after(30):
                while sum("refused the subscription" in r.getMessage() for r in caplog.records) < 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert not worker.session.connected
            worker.request_shutdown()
        servers.cancel_scope.cancel()
    refusals = [r.getMessage() for r in caplog.records if "refused the subscription" in r.getMessage()]
    assert "not authorized" in refusals[0].lower()
    assert "retrying in" in refusals[0]
