"""Schedules in a group that requires signed jobs: a worker runs its own ticks, and only those, once in the group.

Real broker, real Ansible; the clock the schedulers read is the test's. A tick carries no
signature: what arrives from the network with a tick's task_id runs only if it is exactly
the launch the worker's own templates make for it.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
import yaml

from ansible_worker.controller.client import Client
from ansible_worker.ops.config import Settings
from ansible_worker.protocol.claims import claim_document, new_claim_id, request_digest
from ansible_worker.protocol.signing import Signer
from ansible_worker.protocol.topics import Topics
from ansible_worker.templates.loading import load_templates
from ansible_worker.templates.schedules import ScheduledEntry, scheduled_entries
from ansible_worker.worker.service import Worker
from tests.conftest import Broker, client_for, make_settings, open_controller, require_signatures
from tests.templates.test_schedules import START, SteppedClock
from tests.worker.test_resilience import sleeper, wait_for_peer

# The first tick of a minutely entry after START, and the next ones.
TICK = START + timedelta(seconds=30)


def write_templates(playbook_dir: Path, schedule: list[dict[str, Any]]) -> list[ScheduledEntry]:
    """A template whose runs append to the file its `marker` answer names, with `schedule`; its entries."""
    template = {
        "playbook": "append.yml",
        "inventory": "one_host.ini",
        "survey": {"marker": {"type": "string", "required": True}},
        "schedule": schedule,
    }
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump({"templates": {"counted": template}}))
    return scheduled_entries(load_templates(playbook_dir, "templates.yml"))


def signed_settings(broker: Broker, playbook_dir: Path, group: str, keys: Path, **worker: Any) -> Settings:
    return make_settings(
        broker.port, playbook_dir, group, security=require_signatures(keys), templates="templates.yml", **worker
    )


def launch(entry: ScheduledEntry, tick: datetime, **extra_vars: Any) -> dict[str, Any]:
    """The launch a worker fires for `entry` at `tick` (with `extra_vars` in place of the entry's answers)."""
    return {
        "task_id": entry.task_id(tick),
        "template": entry.template,
        "extra_vars": extra_vars or entry.entry.extra_vars,
    }


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


async def start_workers(
    nursery: trio.Nursery, stack: AsyncExitStack, settings: list[Settings], clock: SteppedClock
) -> list[Worker]:
    """Workers on the test's clock, each waiting for its first tick; shut down when `stack` closes."""
    workers = []
    for each in settings:
        worker = Worker(each, clock=clock)
        await nursery.start(worker.serve)
        stack.callback(worker.request_shutdown)
        workers.append(worker)
    for worker in workers:
        assert worker.scheduler is not None
        with trio.fail_after(15):
            await worker.scheduler.ready.wait()
    return workers


async def test_a_signed_group_runs_each_tick_and_a_one_time_entry_once(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path
) -> None:
    cron, once = tmp_path / "cron", tmp_path / "once"
    at = datetime(2026, 12, 24, 12, 1, 30, tzinfo=UTC)
    minutely, one_time = write_templates(
        playbook_dir,
        [
            {"cron": "* * * * *", "extra_vars": {"marker": str(cron)}},
            {"at": "2026-12-24T12:01:30Z", "extra_vars": {"marker": str(once)}},
        ],
    )
    clock = SteppedClock(START)
    ticks = [TICK, TICK + timedelta(minutes=1)]
    async with open_controller(broker, group) as controller, trio.open_nursery() as nursery, AsyncExitStack() as stack:
        settings = [signed_settings(broker, playbook_dir, group, keys, worker_id=f"signed-{n}") for n in range(3)]
        await start_workers(nursery, stack, settings, clock)
        for tick in ticks:
            clock.move_to(tick)
            await controller.wait_terminal(minutely.task_id(tick))
        clock.move_to(at)
        await controller.wait_terminal(one_time.task_id(at))
        # Every worker fired every tick: give the losers' copies time to show any second run.
        await controller.sync()
    for task_id in [minutely.task_id(tick) for tick in ticks] + [one_time.task_id(at)]:
        terminal = controller.terminal_statuses(task_id)
        assert [status["state"] for status in terminal] == ["success"], (task_id, terminal)
        running = {status["worker_id"] for status in controller.statuses[task_id] if status["state"] == "running"}
        assert len(running) == 1, (task_id, running)
    assert (runs(cron), runs(once)) == (2, 1)


async def test_a_forged_tick_on_the_tasks_topic_never_runs(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path
) -> None:
    genuine, forged = tmp_path / "genuine", tmp_path / "forged"
    (entry,) = write_templates(playbook_dir, [{"cron": "* * * * *", "extra_vars": {"marker": str(genuine)}}])
    alice = Signer.from_file(keys / "alice.key")
    tasks = Topics("ansible", group).tasks
    later, next_but_one = TICK + timedelta(minutes=1), TICK + timedelta(minutes=2)
    between = f"{entry.name}.{TICK + timedelta(seconds=30):%Y%m%dT%H%M%SZ}"
    forgeries: dict[str, tuple[dict[str, Any], str]] = {
        # A tick's task_id with answers of someone's own.
        "answers": (launch(entry, later, marker=str(forged)), "not a tick this worker's schedule makes: its launch"),
        # The entry's answers, at a moment that is not one of its ticks.
        "moment": (
            {**launch(entry, TICK), "task_id": between},
            "not a tick this worker's schedule makes: 2026-12-24T12:00:30+00:00 is not a tick of",
        ),
        # The very launch of a tick to come, early: only the schedules launch it.
        "early": (launch(entry, next_but_one), "this task_id is a schedule's tick: only the workers' schedules"),
    }
    signed_tick_id = entry.task_id(TICK + timedelta(minutes=3))
    clock = SteppedClock(START)
    async with open_controller(broker, group) as controller, trio.open_nursery() as nursery, AsyncExitStack() as stack:
        await start_workers(nursery, stack, [signed_settings(broker, playbook_dir, group, keys)], clock)
        clock.move_to(TICK)
        ran = await controller.wait_terminal(entry.task_id(TICK))
        for document, _ in forgeries.values():
            await controller.submit(document)
        # Signed by a trusted controller, but a tick's task_id: still not a tick.
        await controller.submit(alice.sign(tasks, {**launch(entry, TICK), "task_id": signed_tick_id}))
        # The tick that ran, published again: the group took its task_id already.
        await controller.submit(launch(entry, TICK))
        refused = {
            name: await controller.wait_terminal(document["task_id"]) for name, (document, _) in forgeries.items()
        }
        refused["signed"] = await controller.wait_terminal(signed_tick_id)
        await controller.sync()
    assert ran["state"] == "success", ran
    for name, (_, reason) in [*forgeries.items(), ("signed", ("", "not a tick this worker's schedule makes"))]:
        status = refused[name]
        assert status["state"] == "failed", (name, status)
        assert status["refused"] is True
        assert status["error_message"].startswith(reason), (name, status["error_message"])
    assert [status["state"] for status in controller.terminal_statuses(entry.task_id(TICK))] == ["success"]
    assert (runs(genuine), runs(forged)) == (1, 0)


async def leave_a_lost_job(
    client: Client, topics: Topics, worker_key: Signer, document: dict[str, Any], accepted_at: datetime
) -> None:
    """What a worker "ghost" leaves of a queued job when it is lost: its signed claim, its request copy, `queued`."""
    task_id, payload = document["task_id"], json.dumps(document).encode()
    claim = claim_document(
        "ghost",
        new_claim_id(),
        "claimed",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        request_sha256=request_digest(payload),
        accepted_at=accepted_at,
    )
    claim_topic = topics.claim(task_id)
    await client.publish(claim_topic, json.dumps(worker_key.sign(claim_topic, claim)).encode(), qos=1, retain=True)
    await client.publish(topics.request(task_id), payload, qos=1, retain=True)
    queued = {"task_id": task_id, "state": "queued", "worker_id": "ghost"}
    await client.publish(topics.status(task_id), json.dumps(queued).encode(), qos=1, retain=True)


async def test_a_lost_workers_request_copy_runs_only_if_it_is_a_genuine_recent_tick(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path
) -> None:
    """Claims signed with a worker key name each copy, as a lost worker's would: only the tick itself runs."""
    genuine, forged = tmp_path / "genuine", tmp_path / "forged"
    (entry,) = write_templates(playbook_dir, [{"cron": "* * * * *", "extra_vars": {"marker": str(genuine)}}])
    worker_key = Signer.from_file(keys / "worker.key")
    topics = Topics("ansible", group)
    copies: dict[str, tuple[dict[str, Any], datetime, str | None]] = {
        # The group took it two seconds after its time: it runs on the survivor.
        "tick": (launch(entry, TICK), TICK + timedelta(seconds=2), None),
        "answers": (
            launch(entry, TICK + timedelta(minutes=1), marker=str(forged)),
            TICK + timedelta(minutes=1),
            "not a tick this worker's schedule makes: its launch",
        ),
        "moment": (
            {**launch(entry, TICK), "task_id": f"{entry.name}.{TICK + timedelta(seconds=5):%Y%m%dT%H%M%SZ}"},
            TICK + timedelta(seconds=5),
            "not a tick this worker's schedule makes",
        ),
        # A genuine tick of an hour before the group took it: far older than security.max_task_age.
        "old": (
            launch(entry, TICK - timedelta(hours=1)),
            TICK,
            "tick 2026-12-24T11:00:00+00:00 was 3600s old when the group took it",
        ),
    }
    settings = signed_settings(
        broker, playbook_dir, group, keys, worker_id="survivor", heartbeat_interval=1, lost_after=4
    )
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as forger,
        trio.open_nursery() as nursery,
        AsyncExitStack() as stack,
    ):
        for document, accepted_at, _ in copies.values():
            await leave_a_lost_job(forger, topics, worker_key, document, accepted_at)
        # The survivor's schedule never reaches these ticks: only a takeover can run them.
        await start_workers(nursery, stack, [settings], SteppedClock(START))
        ended = {name: await controller.wait_terminal(document["task_id"]) for name, (document, _, _) in copies.items()}
        await controller.sync()
    assert ended["tick"]["state"] == "success", ended["tick"]
    assert ended["tick"]["taken_over_from"] == "ghost"
    for name, (_, _, reason) in copies.items():
        if reason is None:
            continue
        status = ended[name]
        assert status["state"] == "failed", (name, status)
        assert status["taken_over_by"] == "survivor"
        assert f"its request copy was refused: {reason}" in status["error_message"], (name, status["error_message"])
    assert (runs(genuine), runs(forged)) == (1, 0)


async def test_a_draining_signed_worker_hands_a_queued_tick_back_and_it_runs_once_elsewhere(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "tick"
    (entry,) = write_templates(playbook_dir, [{"cron": "* * * * *", "extra_vars": {"marker": str(marker)}}])
    clock = SteppedClock(START)
    leaving_settings = signed_settings(broker, playbook_dir, group, keys, worker_id="leaving", drain_timeout=60)
    staying_settings = signed_settings(broker, playbook_dir, group, keys, worker_id="staying")
    alice = Signer.from_file(keys / "alice.key")
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group, signer=alice) as client,
        trio.open_nursery() as nursery,
        AsyncExitStack() as stack,
    ):
        (leaving,) = await start_workers(nursery, stack, [leaving_settings], clock)
        # Its one slot busy: the tick waits in its queue.
        busy = await client.submit({"task_id": "busy", **sleeper(3)})
        async for status in busy.statuses():
            if status["state"] == "running":
                break
        clock.move_to(TICK)
        await controller.wait_for(entry.task_id(TICK), {"queued"})
        await start_workers(nursery, stack, [staying_settings], clock)
        await wait_for_peer(leaving, "staying")
        leaving.request_shutdown()
        ticked = await controller.wait_terminal(entry.task_id(TICK))
        assert (await controller.wait_terminal("busy"))["state"] == "success"
        await controller.sync()
    assert ticked["state"] == "success", ticked
    assert ticked["worker_id"] == "staying"
    assert any(status.get("handed_back_by") == "leaving" for status in controller.statuses[entry.task_id(TICK)])
    assert [status["state"] for status in controller.terminal_statuses(entry.task_id(TICK))] == ["success"]
    assert runs(marker) == 1


async def test_a_tick_queued_before_a_crash_runs_after_the_restart(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "tick"
    (entry,) = write_templates(playbook_dir, [{"cron": "* * * * *", "extra_vars": {"marker": str(marker)}}])
    clock = SteppedClock(START)
    settings = signed_settings(broker, playbook_dir, group, keys, worker_id="crashing", state_dir=tmp_path / "state")
    alice = Signer.from_file(keys / "alice.key")
    async with open_controller(broker, group) as controller, client_for(broker, group, signer=alice) as client:
        async with trio.open_nursery() as nursery:
            await start_workers(nursery, AsyncExitStack(), [settings], clock)
            busy = await client.submit({"task_id": "crash-running", **sleeper(60)})
            async for status in busy.statuses():
                if status["state"] == "running":
                    break
            clock.move_to(TICK)
            await controller.wait_for(entry.task_id(TICK), {"queued"})
            # A crash for the queued tick (no drain, no hand-back).
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            await start_workers(nursery, stack, [settings], clock)
            final = await controller.wait_terminal(entry.task_id(TICK))
    assert final["state"] == "success", final
    assert final["worker_id"] == "crashing"
    assert runs(marker) == 1
