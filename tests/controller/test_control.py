"""Controlling and watching jobs through the Python client: cancel, live events, presence, retention."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.client import NoWorkerAnswered, Update
from tests.conftest import (
    Broker,
    client_for,
    make_settings,
    processes_mentioning,
    running_worker,
    wait_online,
    worker_config,
)

QUICK = {"playbook": "quick.yml", "inventory": "one_host.ini"}


def sleeper(seconds: int) -> dict[str, Any]:
    return {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": seconds}}


async def collect(updates: AsyncIterator[Update]) -> list[Update]:
    return [update async for update in updates]


async def test_submit_follow_and_wait(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group)), client_for(broker, group) as client:
        job = await client.submit({"task_id": "client-1", "playbook": "recap.yml", "inventory": "inventory.ini"})
        updates = await collect(job.updates())
        final = job.latest
    assert final is not None
    assert final["state"] == "success"
    statuses = [u.data["state"] for u in updates if u.kind == "status"]
    assert statuses[0] == "queued"
    assert statuses[-1] == "success"
    events = [u.data for u in updates if u.kind == "event"]
    # In order, numbered from 1 without gaps, and the terminal status knows the last number.
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert final["last_event_seq"] == len(events)
    assert final["events_dropped"] == 0
    assert updates[-1].kind == "status"  # every event came before the terminal status
    lines = [event.get("line") for event in events]
    assert "PLAY [Counts]" in lines
    assert "TASK [A change]" in lines
    assert "changed: [host1]" in lines
    assert 'ok: [host1] => {"msg": "hello"}' in lines
    assert "skipping: [host2]" in lines
    assert any(line and line.startswith("fatal: [host1]: FAILED!") and line.endswith("...ignoring") for line in lines)
    recap = next(event for event in events if event["event"] == "playbook_on_stats")
    assert recap["line"].splitlines()[0] == "PLAY RECAP"
    result_event = next(event for event in events if event.get("task") == "A change" and event.get("status"))
    assert result_event["host"] in ("host1", "host2")
    assert result_event["duration"] >= 0
    assert result_event["time"].endswith("Z")
    assert result_event["result"]["rc"] == 0


async def test_no_log_results_never_published(broker: Broker, playbook_dir: Path, group: str) -> None:
    (playbook_dir / "secret.yml").write_text(
        "- hosts: host1\n  gather_facts: false\n  tasks:\n"
        "    - name: Hidden\n      ansible.builtin.debug:\n        msg: the-secret-value\n      no_log: true\n"
        "    - name: Hidden failure\n      ansible.builtin.fail:\n        msg: failing-secret\n      no_log: true\n"
    )
    async with running_worker(make_settings(broker.port, playbook_dir, group)), client_for(broker, group) as client:
        job = await client.submit({"task_id": "nolog", "playbook": "secret.yml", "inventory": "one_host.ini"})
        updates = await collect(job.updates())
    wire = json.dumps([update.data for update in updates])
    assert "the-secret-value" not in wire
    assert "failing-secret" not in wire
    assert updates[-1].data["error_message"] == "task 'Hidden failure' failed on host 'host1': output hidden by no_log"
    hidden = [u.data for u in updates if u.kind == "event" and u.data.get("task") == "Hidden" and "status" in u.data]
    assert hidden[0]["no_log"] is True
    assert "result" not in hidden[0]
    assert "data" not in hidden[0]


# own_session.yml's command starts a session of its own, as Ansible's own worker processes do:
# a signal to the run's process group does not reach it.
@pytest.mark.parametrize("playbook", ["sleep.yml", "own_session.yml"])
async def test_cancel_running_job_ends_its_process_group(
    broker: Broker, playbook_dir: Path, group: str, playbook: str
) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group)), client_for(broker, group) as client:
        job = await client.submit({"task_id": "cancel-run", **sleeper(311), "playbook": playbook})
        async for status in job.statuses():
            if status.get("current_task") == "Sleep for a while":
                break
        with trio.fail_after(30):
            while not processes_mentioning("sleep 311"):  # noqa: ASYNC110 - another process has no event
                await trio.sleep(0.05)
        await job.cancel(reason="maintenance window", requested_by="alice")
        final = await job.wait()
        assert processes_mentioning("sleep 311") == []
        assert processes_mentioning(str(playbook_dir)) == []
    assert final["state"] == "cancelled"
    assert final["error_message"] == "cancelled by alice: maintenance window"
    assert final["cancelled_by"] == "alice"
    assert final["return_code"] is not None
    assert final["return_code"] != 0


async def test_cancel_queued_job_removes_it_at_once(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group, kill_grace=1)),
        client_for(broker, group) as client,
    ):
        running = await client.submit({"task_id": "blocker", **sleeper(60)})
        async for status in running.statuses():
            if status["state"] == "running":
                break
        queued = await client.submit({"task_id": "waiting", **QUICK})
        await client.cancel("waiting")
        final = await queued.wait()
        assert await client.status("blocker") is not None
        assert (await client.status("blocker") or {})["state"] == "running"
        await running.cancel()
        await running.wait()
    assert final["state"] == "cancelled"
    assert final["error_message"].startswith("cancelled by ")
    assert final["started_at"] is None
    assert final["return_code"] is None


async def test_cancel_of_unknown_job_is_ignored(
    broker: Broker, playbook_dir: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="ansible_worker")
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group)) as worker,
        client_for(broker, group) as client,
    ):
        await client.cancel("nobody-has-this")
        await client.link.publish(client.topics.cancel("bad-payload"), b"[1]", qos=1)
        # A job submitted afterwards runs normally: the worker took both requests in its stride.
        final = await (await client.submit({"task_id": "after-cancel", **QUICK})).wait()
        assert await client.status("nobody-has-this") is None
        assert worker.session.connected
    assert final["state"] == "success"
    messages = [record.getMessage() for record in caplog.records]
    assert "task nobody-has-this: not held here; ignoring its cancel request" in messages
    assert "task bad-payload: ignoring a cancel request: payload is a JSON array, not an object" in messages


async def test_cancel_during_git_pull(broker: Broker, playbook_dir: Path, group: str, tmp_path: Path) -> None:
    # A git that hangs: cancel must end it as it ends Ansible.
    slow_git = tmp_path / "slow-git"
    slow_git.write_text("#!/bin/sh\nexec sleep 307\n")
    slow_git.chmod(slow_git.stat().st_mode | stat.S_IEXEC)
    settings = make_settings(broker.port, playbook_dir, group, git_path=str(slow_git))
    async with running_worker(settings), client_for(broker, group) as client:
        job = await client.submit({"task_id": "git-cancel", **QUICK, "git_pull": True})
        with trio.fail_after(30):
            while not processes_mentioning("sleep 307"):  # noqa: ASYNC110 - another process has no event
                await trio.sleep(0.05)
        await job.cancel(reason="wrong branch")
        final = await job.wait()
        assert processes_mentioning("sleep 307") == []
    assert final["state"] == "cancelled"
    assert final["error_message"].endswith(": wrong branch")


FLOOD = """\
#!{python}
# A stand-in for ansible-playbook that floods the event FIFO, which real Ansible
# cannot be made to do on demand.
import json, os, time
fifo = os.open(os.environ["ANSIBLE_WORKER_EVENT_FIFO"], os.O_WRONLY)
def emit(event):
    os.write(fifo, (json.dumps(event) + "\\n").encode())
emit({{"event": "playbook_on_play_start", "play": "flood", "time": time.time()}})
for index in range({count}):
    emit({{"event": "runner_on_ok", "task": "t", "host": "h%d" % (index % 7), "changed": False, "time": time.time()}})
emit({{"event": "playbook_on_stats", "hosts": {{"h": {{"ok": {count}}}}}, "time": time.time()}})
print("flooded")
"""


async def test_event_flood_is_rate_limited_and_status_survives(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    count = 20_000
    fake = tmp_path / "flood-ansible-playbook"
    fake.write_text(FLOOD.format(python=sys.executable, count=count))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    settings = make_settings(broker.port, playbook_dir, group, ansible_playbook_path=str(fake), events_per_second=100)
    async with running_worker(settings), client_for(broker, group) as client:
        job = await client.submit({"task_id": "flood", **QUICK})
        updates = await collect(job.updates())
    final = updates[-1].data
    assert final["state"] == "success"
    assert final["tasks_ok"] == count
    events = [u.data for u in updates if u.kind == "event"]
    assert final["events_dropped"] > 0
    # Every event Ansible wrote was either published or counted as dropped.
    assert final["last_event_seq"] + final["events_dropped"] == count + 2
    assert [event["seq"] for event in events] == list(range(1, final["last_event_seq"] + 1))


async def test_terminal_status_expires_after_retention(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, status_retention=600)
    async with running_worker(settings), client_for(broker, group) as client:
        receive = await client.subscribe([client.topics.status("kept")])
        await (await client.submit({"task_id": "kept", **QUICK})).wait()
        messages = []
        with trio.fail_after(10):
            async for message in receive:
                messages.append(message)
                if b'"success"' in message.payload:
                    break
    assert [message.expiry for message in messages if b'"running"' in message.payload] == [None] * (len(messages) - 2)
    assert messages[0].expiry is None  # queued
    assert messages[-1].expiry is not None
    assert 590 <= messages[-1].expiry <= 600


async def test_forget_clears_the_retained_status(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group)), client_for(broker, group) as client:
        await (await client.submit({"task_id": "forget-me", **QUICK})).wait()
        before = await client.status("forget-me")
        await client.forget("forget-me")
        after = await client.status("forget-me")
    assert before is not None
    assert before["state"] == "success"
    assert after is None


async def test_submit_without_workers_says_so(broker: Broker, group: str) -> None:
    async with client_for(broker, group) as client:
        with pytest.raises(NoWorkerAnswered, match=f"no worker of group '{group}' answered within 1s"):
            await client.submit({"task_id": "nobody", **QUICK}, answer_within=1)


async def test_presence_appears_updates_and_goes_offline(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, worker_id="presence-a", concurrency=2)
    async with client_for(broker, group) as client:
        async with running_worker(settings):
            await wait_online(client, "presence-a")
            (idle,) = await client.workers()
            job = await client.submit({"task_id": "busy", **sleeper(2)})
            async for status in job.statuses():
                if status["state"] == "running":
                    break
            (busy,) = await client.workers()
            await job.wait()
        (gone,) = await client.workers()
    assert idle["worker_id"] == "presence-a"
    assert idle["state"] == "online"
    assert idle["capacity"] == 2
    assert (idle["running"], idle["queued"], idle["jobs_done"]) == (0, 0, 0)
    assert idle["heartbeat_at"].endswith("Z")
    assert busy["running"] == 1
    assert gone["state"] == "offline"
    assert gone["jobs_done"] == 1


async def test_killed_worker_is_marked_offline_by_its_will(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    config = worker_config(tmp_path / "will.json", broker, playbook_dir, group, worker_id="doomed")
    executable = str(Path(sys.executable).parent / "ansible-worker")
    process = await trio.lowlevel.open_process([executable, "run", "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        async with client_for(broker, group) as client:
            await wait_online(client, "doomed")
            receive = await client.subscribe([client.topics.worker("doomed")])
            process.send_signal(signal.SIGKILL)
            with trio.fail_after(10):
                await process.wait()
            # The broker publishes the will as soon as it sees the connection drop.
            with trio.fail_after(20):
                async for message in receive:
                    presence = json.loads(message.payload)
                    if presence["state"] == "offline":
                        break
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    assert presence["worker_id"] == "doomed"


async def test_presence_heartbeat_repeats_on_its_interval(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, worker_id="beating", heartbeat_interval=0.2)
    async with client_for(broker, group) as client:
        receive = await client.subscribe([client.topics.worker("beating")])
        async with running_worker(settings):
            beats = []
            with trio.fail_after(10):
                async for message in receive:
                    beats.append(json.loads(message.payload))
                    if len(beats) == 4:
                        break
    stamps = [beat["heartbeat_at"] for beat in beats]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 4
    assert {beat["state"] for beat in beats} == {"online"}


@pytest.mark.parametrize("options", [{"events_qos": 1}, {"publish_events": False}], ids=["qos1", "off"])
async def test_event_publishing_options(
    broker: Broker, playbook_dir: Path, group: str, options: dict[str, Any]
) -> None:
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group, **options)),
        client_for(broker, group) as client,
    ):
        job = await client.submit({"task_id": "event-options", "playbook": "recap.yml", "inventory": "inventory.ini"})
        updates = await collect(job.updates())
    final = updates[-1]
    assert final.kind == "status"
    assert final.data["state"] == "success"
    events = [u.data for u in updates if u.kind == "event"]
    if options.get("publish_events") is False:
        assert events == []
        assert final.data["last_event_seq"] == 0
    else:
        # Acknowledged one by one through the publisher task, all before the terminal status.
        assert final.data["last_event_seq"] > 20
        assert [event["seq"] for event in events] == list(range(1, final.data["last_event_seq"] + 1))
