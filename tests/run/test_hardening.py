"""Promises of SECURITY.md kept against an unlucky operator: the journal is private, a status error stays one job's."""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
import trio.lowlevel

from tests.conftest import ANSIBLE_PLAYBOOK, Broker, make_settings, open_controller, running_worker
from tests.ops.test_cli import cli, good_config


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private(path: Path) -> bool:
    """Whether only the owner may use `path`: a file 0600, a directory (the source cache) 0700."""
    return _mode(path) == (0o700 if path.is_dir() else 0o600)


async def test_journal_and_its_wal_are_private(broker: Broker, playbook_dir: Path, group: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"  # missing: the worker creates it
    old_umask = os.umask(0o022)  # what a service usually runs with
    try:
        settings = make_settings(broker.port, playbook_dir, group, state_dir=str(state_dir))
        async with open_controller(broker, group) as controller, running_worker(settings):
            request = {
                "task_id": "private-1",
                "playbook": "quick.yml",
                "inventory": "inventory.ini",
                "extra_vars": {"token": "hunter2"},
            }
            await controller.submit(request)
            final = await controller.wait_terminal("private-1")
            files = sorted(state_dir.iterdir())
            modes = {path.name: _mode(path) for path in files}
            private = {path.name: _private(path) for path in files}
    finally:
        os.umask(old_umask)
    assert final["state"] == "success"
    assert _mode(state_dir) == 0o700
    assert {"journal.sqlite3", "journal.sqlite3-wal"} <= set(modes)
    assert all(private.values()), modes


async def test_a_journal_left_readable_is_narrowed(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    for name in ("journal.sqlite3", "journal.sqlite3-wal"):
        (state_dir / name).touch(mode=0o644)
    settings = make_settings(broker.port, playbook_dir, group, state_dir=str(state_dir))
    async with running_worker(settings):
        await trio.lowlevel.checkpoint()
        modes = {path.name: _mode(path) for path in state_dir.iterdir()}
        private = all(_private(path) for path in state_dir.iterdir())
    assert private, modes
    assert modes["journal.sqlite3"] == modes["journal.sqlite3-wal"] == 0o600


def test_validate_warns_about_a_state_dir_open_to_others(tmp_path: Path, playbook_dir: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = good_config(tmp_path, 1883, playbook_dir, extra=f"  state_dir: {state_dir}\n")
    os.chmod(state_dir, 0o755)  # noqa: S103 - the mistake under test
    result = cli("validate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert f"warning: worker.state_dir: {state_dir} is open to every user (mode 755)" in result.stdout
    os.chmod(state_dir, 0o700)
    result = cli("validate", "-c", str(config))
    assert "worker.state_dir" not in result.stdout


def _surrogate_ansible(tmp_path: Path) -> Path:
    """A stand-in for an older ansible-core whose task name carries a lone surrogate (`\\ud800`)."""
    script = tmp_path / "surrogate-ansible-playbook"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"if not any(arg.endswith('stats.yml') for arg in sys.argv): os.execv({str(ANSIBLE_PLAYBOOK)!r}, sys.argv)\n"
        "with open(os.environ['ANSIBLE_WORKER_EVENT_FIFO'], 'w') as fifo:\n"
        '    fifo.write(\'{"event": "playbook_on_task_start", "counter": 1, "task": "bad \\\\ud800"}\\n\')\n'
        "    fifo.flush()\n"
        "    import time; time.sleep(0.5)\n"
        '    fifo.write(\'{"event": "playbook_on_stats", "counter": 2, "stats": {}, "msg": "\\\\udfff"}\\n\')\n'
    )
    script.chmod(0o755)
    return script


async def test_a_status_that_does_not_serialize_fails_one_job_not_the_worker(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    fake = _surrogate_ansible(tmp_path)
    settings = make_settings(broker.port, playbook_dir, group, ansible_playbook_path=str(fake))
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit({"task_id": "surrogate-1", "playbook": "stats.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("surrogate-1")
        # The worker is still there and still runs jobs (this one with the real ansible-playbook).
        await controller.submit({"task_id": "after-surrogate", "playbook": "quick.yml", "inventory": "inventory.ini"})
        after = await controller.wait_terminal("after-surrogate")
    assert final["state"] == "failed"
    running = [status for status in controller.statuses["surrogate-1"] if status["state"] == "running"]
    assert any(status.get("current_task") == "bad \ufffd" for status in running), controller.statuses["surrogate-1"]
    assert after["state"] == "success"


async def test_a_stale_online_presence_is_no_peer_to_hand_back_to(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    # A worker that died while the broker was away leaves `online` retained: its will never went out.
    ten_minutes_ago = (datetime.now(UTC) - timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    ghost = {
        "worker_id": "ghost",
        "state": "online",
        "heartbeat_at": ten_minutes_ago,
        "heartbeat_interval": 30,
        "capacity": 1,
    }
    settings = make_settings(broker.port, playbook_dir, group, worker_id="leaving", drain_timeout=30)
    async with open_controller(broker, group) as controller:
        await controller.link.publish(controller.topics.worker("ghost"), json.dumps(ghost).encode(), qos=1, retain=True)
        async with running_worker(settings) as worker:
            with trio.fail_after(10):
                while worker.peers.get("ghost") != "online":  # noqa: ASYNC110 - presence is state, polled with a bound
                    await trio.sleep(0.02)
            sleeper = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 2}}
            await controller.submit({"task_id": "stale-running", **sleeper})
            await controller.submit({"task_id": "stale-queued", "playbook": "quick.yml", "inventory": "one_host.ini"})
            with trio.fail_after(10):
                while "stale-queued" not in controller.statuses:  # noqa: ASYNC110 - statuses arrive on the wire
                    await trio.sleep(0.02)
            worker.request_shutdown()
            with trio.fail_after(30):
                queued = await controller.wait_terminal("stale-queued")
        await controller.link.publish(controller.topics.worker("ghost"), b"", qos=1, retain=True)
    assert queued["state"] == "cancelled"
    assert queued["error_message"] == "cancelled: the worker shut down before the job started"


async def test_a_bad_message_never_replaces_the_retained_status_of_a_job_that_ran(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    first = make_settings(broker.port, playbook_dir, group, worker_id="ran-it")
    other = make_settings(broker.port, playbook_dir, group, worker_id="never-held-it")
    async with open_controller(broker, group) as controller:
        async with running_worker(first):
            await controller.submit({"task_id": "kept-1", "playbook": "quick.yml", "inventory": "one_host.ini"})
            assert (await controller.wait_terminal("kept-1"))["state"] == "success"
        # Another worker, which never held kept-1, gets the bad messages (unsigned mode).
        async with running_worker(other):
            before = len(controller.statuses["kept-1"])
            for bad in ({"task_id": "kept-1"}, {"task_id": "kept-1", "playbook": "../x.yml", "inventory": "i"}):
                await controller.submit(bad)
            # Handled in order: once a later bad message is answered, these were seen.
            await controller.submit({"task_id": "kept-later"})
            answer = await controller.wait_terminal("kept-later")
            assert answer["state"] == "failed"
            assert answer["refused"] is True, answer
            # The group holds kept-1 (its claim): not even a live answer can be mistaken for its end.
            assert len(controller.statuses["kept-1"]) == before
    # What the broker keeps for the job is still what its own worker said.
    async with open_controller(broker, group) as late:
        retained = await late.wait_terminal("kept-1", within=10)
    assert retained["state"] == "success"
    assert retained["worker_id"] == "ran-it"


async def test_a_terminal_status_the_link_cannot_take_fails_once_and_never_loops(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(broker.port, playbook_dir, group)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        # A fault current code cannot produce on demand: the link raising something that is
        # not a link error (as paho does for an expiry it cannot pack) for this job's terminal statuses.
        publish = worker.session.publish
        refused_attempts: list[bytes] = []

        async def publish_or_fail(
            topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
        ) -> None:
            if topic == worker.topics.status("unsendable") and expiry is not None:
                refused_attempts.append(payload)
                raise struct.error("'I' format requires 0 <= number <= 4294967295")
            await publish(topic, payload, qos=qos, retain=retain, expiry=expiry)

        worker.session.publish = publish_or_fail  # type: ignore[method-assign]
        await controller.submit({"task_id": "unsendable", "playbook": "quick.yml", "inventory": "one_host.ini"})
        await controller.submit({"task_id": "after-unsendable", "playbook": "quick.yml", "inventory": "one_host.ini"})
        after = await controller.wait_terminal("after-unsendable")
    # The publisher is one ordered task: had it looped on the first job, the second's status
    # would never have gone out. Its success, then exactly two tries: the status and its one replacement.
    assert after["state"] == "success"
    assert len(refused_attempts) == 2
    assert json.loads(refused_attempts[0])["state"] == "success"
    replacement = json.loads(refused_attempts[1])
    assert replacement["state"] == "failed"
    assert replacement["error_message"].startswith("internal error: its status could not be published: ")
