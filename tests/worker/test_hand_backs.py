"""A worker that stops gives its unstarted jobs back to the group: one owner at every moment, whatever the peers do."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.protocol.signing import Signer
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker import hand_back as hand_back_module
from ansible_worker.worker.service import Worker
from tests.conftest import Broker, Controller, make_settings, open_controller, require_signatures, running_worker
from tests.worker.group_jobs import QUICK, append_job, run_count


@asynccontextmanager
async def silent_peer(controller: Controller, worker: Worker) -> AsyncIterator[None]:
    """A peer with a fresh heartbeat that takes nothing (hung, partitioned), as `worker` sees it."""
    now = datetime.now(UTC).isoformat()
    ghost = {"worker_id": "ghost", "state": "online", "heartbeat_at": now, "heartbeat_interval": 60}
    topic = controller.topics.worker("ghost")
    await controller.link.publish(topic, json.dumps(ghost).encode(), qos=1, retain=True)
    try:
        with trio.fail_after(10):
            while worker.peers.online() != ["ghost"]:  # noqa: ASYNC110 - presence is state, polled with a bound
                await trio.sleep(0.02)
        yield
    finally:
        await controller.link.publish(topic, b"", qos=1, retain=True)


async def test_a_job_handed_to_a_peer_that_never_answers_is_taken_back_and_cancelled(
    broker: Broker, playbook_dir: Path, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer with a fresh heartbeat that takes nothing (hung, partitioned) is not a place to leave a job."""
    monkeypatch.setattr(hand_back_module, "HAND_BACK_ANSWER_TIMEOUT", 2.0)
    settings = make_settings(broker.port, playbook_dir, group, worker_id="leaving", drain_timeout=30)
    async with open_controller(broker, group) as controller:
        async with running_worker(settings) as worker, silent_peer(controller, worker):
            sleeper = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 2}}
            await controller.submit({"task_id": "unanswered-running", **sleeper})
            await controller.submit({"task_id": "unanswered", **QUICK})
            await controller.wait_for("unanswered", {"queued"})
            worker.request_shutdown()
            final = await controller.wait_terminal("unanswered", within=30)
        await controller.sync()
        states = [(s["state"], s.get("handed_back_by")) for s in controller.statuses["unanswered"]]
    assert final["state"] == "cancelled"
    assert final["error_message"] == (
        "cancelled: handed back by leaving while it shut down, but no other worker took it within 2s"
    )
    assert states[-2:] == [("queued", "leaving"), ("cancelled", None)]


async def test_a_hand_back_the_broker_never_confirms_still_has_one_owner(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    """The request reaches the next worker, but its QoS 2 handshake never completes for the sender."""
    leaving_settings = make_settings(broker.port, playbook_dir, group, worker_id="leaving", drain_timeout=30)
    staying_settings = make_settings(broker.port, playbook_dir, group, worker_id="staying")
    async with open_controller(broker, group) as controller:
        async with running_worker(leaving_settings) as leaving:
            publish = leaving.session.publish

            async def unconfirmed(topic: str, payload: bytes, **options: Any) -> None:
                await publish(topic, payload, **options)
                if topic == leaving.topics.tasks:
                    # A fault the broker cannot be made to produce: sent, but never confirmed.
                    await trio.sleep_forever()

            leaving.session.publish = unconfirmed  # type: ignore[method-assign]
            sleeper = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 2}}
            await controller.submit({"task_id": "handed-running", **sleeper})
            await controller.submit(append_job("handed", tmp_path))
            await controller.wait_for("handed", {"queued"})
            async with running_worker(staying_settings):
                with trio.fail_after(15):
                    while leaving.peers.online() != ["staying"]:  # noqa: ASYNC110 - presence is state, polled with a bound
                        await trio.sleep(0.02)
                leaving.request_shutdown()
                final = await controller.wait_terminal("handed", within=60)
                # The hand-back has settled once the leaving worker has stopped.
                with trio.fail_after(60):
                    while leaving.session.connected:  # noqa: ASYNC110 - the worker's own state, bounded
                        await trio.sleep(0.05)
        await controller.sync()
        statuses = controller.statuses["handed"]
    assert final["state"] == "success"
    assert final["worker_id"] == "staying"
    assert len(controller.terminal_statuses("handed")) == 1
    assert run_count("handed", tmp_path) == 1
    handed_back = next(i for i, s in enumerate(statuses) if s.get("handed_back_by") == "leaving")
    # Every status of the next worker comes after the hand-back, in one order.
    assert all(s.get("worker_id") == "staying" for s in statuses[handed_back + 1 :])


async def test_a_cancel_that_arrives_during_a_hand_back_ends_the_job_there(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(broker.port, playbook_dir, group, worker_id="leaving", drain_timeout=30)
    async with (
        open_controller(broker, group) as controller,
        running_worker(settings) as worker,
        silent_peer(controller, worker),
    ):
        sleeper = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 3}}
        await controller.submit({"task_id": "cancel-running", **sleeper})
        await controller.submit({"task_id": "cancel-handed", **QUICK})
        await controller.wait_for("cancel-handed", {"queued"})
        worker.request_shutdown()
        with trio.fail_after(10):
            while not any(s.get("handed_back_by") for s in controller.statuses["cancel-handed"]):  # noqa: ASYNC110 - statuses arrive on the wire
                await trio.sleep(0.02)
        cancel = json.dumps({"reason": "not now", "requested_by": "ops"}).encode()
        await controller.link.publish(controller.topics.cancel("cancel-handed"), cancel, qos=1)
        # Well before the 10 s a hand-back waits for an answer.
        final = await controller.wait_terminal("cancel-handed", within=8)
    assert final["state"] == "cancelled"
    assert final["error_message"] == "cancelled by ops: not now"


async def test_a_hand_back_lets_only_the_request_it_hands_back_skip_the_age_check(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release names the request it hands back; an old request for the same task_id is still expired."""
    monkeypatch.setattr(hand_back_module, "HAND_BACK_TIMEOUT", 30.0)
    alice = Signer.from_file(keys / "alice.key")
    topics = Topics("ansible", group)
    security = {**require_signatures(keys), "max_task_age": 6, "max_clock_skew": 30}
    new_runs, old_runs = tmp_path / "new", tmp_path / "old"
    new_runs.mkdir()
    old_runs.mkdir()
    issued = datetime.now(UTC) - timedelta(seconds=2)
    handed = alice.sign(topics.tasks, append_job("handed", new_runs), now=issued)
    # A genuine request for the same task_id, signed a day ago, kept by someone who saw it.
    day_old = alice.sign(topics.tasks, append_job("handed", old_runs), now=datetime.now(UTC) - timedelta(days=1))
    sleeper = {"task_id": "handed-running", "playbook": "sleep.yml", "inventory": "one_host.ini"}
    leaving_settings = make_settings(
        broker.port, playbook_dir, group, security=security, worker_id="leaving", concurrency=1, drain_timeout=30
    )
    staying_settings = make_settings(broker.port, playbook_dir, group, security=security, worker_id="staying")
    async with open_controller(broker, group) as controller, running_worker(leaving_settings) as leaving:
        release, released, go_on = leaving.claims.release, trio.Event(), trio.Event()

        async def held_release(task_id: str, claim_id: str, **options: Any) -> None:
            # Out, but the request not yet published again: the moment a replay is sent.
            await release(task_id, claim_id, **options)
            released.set()
            await go_on.wait()

        leaving.claims.release = held_release  # type: ignore[method-assign]
        # It holds the slot until cancelled: a sleeper that ended first would let "handed" run here.
        await controller.submit(alice.sign(topics.tasks, {**sleeper, "extra_vars": {"seconds": 600}}))
        await controller.submit(handed)
        await controller.wait_for("handed", {"queued"})
        # The sleeper holds the only slot: only "handed" is handed back.
        await controller.wait_for("handed-running", {"running"})
        async with running_worker(staying_settings) as staying:
            with trio.fail_after(15):
                while leaving.peers.online() != ["staying"]:  # noqa: ASYNC110 - presence is state, polled with a bound
                    await trio.sleep(0.02)
            leaving.request_shutdown()
            with trio.fail_after(30):
                await released.wait()
                while staying.claims.released_request("handed") is None:  # noqa: ASYNC110 - the claim book's state, bounded
                    await trio.sleep(0.02)
            await controller.submit(day_old)
            refused = await controller.wait_terminal("handed")
            # The handed-back request is past max_task_age by now; its release still lets it in.
            await trio.sleep(max(0.0, (issued + timedelta(seconds=7) - datetime.now(UTC)).total_seconds()))
            go_on.set()
            final = await controller.wait_for("handed", {"success"})
            cancel = alice.sign(topics.cancel("handed-running"), {"reason": "done", "requested_by": "alice"})
            await controller.link.publish(topics.cancel("handed-running"), json.dumps(cancel).encode(), qos=1)
            await controller.wait_terminal("handed-running")
    assert refused["refused"] is True
    # A day, and the second that may have passed since it was signed.
    assert re.match(r"expired: issued 8640[01]s ago", refused["error_message"]), refused["error_message"]
    assert final["worker_id"] == "staying"
    assert run_count("handed", new_runs) == 1
    assert run_count("handed", old_runs) == 0
