"""Lose nothing: drain with hand-back, crash recovery, lost workers, Ansible faults."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.client import JobLost
from ansible_worker.protocol.signing import Signer
from ansible_worker.worker.service import Worker
from tests.conftest import (
    Broker,
    client_for,
    make_settings,
    processes_mentioning,
    require_signatures,
    running_worker,
    unique_seconds,
    wait_online,
    worker_config,
)
from tests.deployment import Deployment, unprivileged_lane

QUICK = {"playbook": "quick.yml", "inventory": "one_host.ini"}
EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")


def sleeper(seconds: float | str) -> dict[str, Any]:
    return {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": seconds}}


async def wait_for_peer(worker: Worker, peer: str) -> None:
    with trio.fail_after(15):
        while worker.peers.get(peer) != "online":  # noqa: ASYNC110 - presence is state, polled with a bound
            await trio.sleep(0.02)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
async def test_drain_hands_queued_jobs_to_another_worker(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, signed: bool
) -> None:
    # Signed, a handed-back job is one the group has claimed: the release lets it run again.
    security = require_signatures(keys) if signed else None
    signer = Signer.from_file(keys / "alice.key") if signed else None
    first = make_settings(broker.port, playbook_dir, group, security=security, worker_id="leaving", drain_timeout=60)
    second = make_settings(broker.port, playbook_dir, group, security=security, worker_id="staying")
    # A connection of its own for the full history: overlapping subscriptions on one
    # connection would each get a copy of every message.
    async with client_for(broker, group) as watcher, client_for(broker, group, signer=signer) as client:
        status_feed = await watcher.subscribe([f"{watcher.topics.tasks}/+/status"])
        presence_feed = await watcher.subscribe([watcher.topics.worker("leaving")])
        async with running_worker(first) as leaving:
            running = await client.submit({"task_id": "drain-running", **sleeper(3)})
            queued = [await client.submit({"task_id": f"drain-queued-{index}", **QUICK}) for index in range(3)]
            async with running_worker(second):
                await wait_for_peer(leaving, "staying")
                leaving.request_shutdown()
                with trio.fail_after(60):
                    finals = [await handle.wait() for handle in (running, *queued)]
        await watcher.barrier()
    history: dict[str, list[dict[str, Any]]] = {}
    while True:
        try:
            message = status_feed.receive_nowait()
        except trio.WouldBlock:
            break
        if message.payload:
            status = json.loads(message.payload)
            history.setdefault(status["task_id"], []).append(status)
    states = []
    while True:
        try:
            states.append(json.loads(presence_feed.receive_nowait().payload)["state"])
        except trio.WouldBlock:
            break
    # Its presence said it was draining, then offline.
    assert states[-1] == "offline"
    assert "draining" in states
    assert states.index("draining") < len(states) - 1
    # The running job finished where it was, within the drain timeout.
    assert finals[0]["state"] == "success"
    assert finals[0]["worker_id"] == "leaving"
    for final in finals[1:]:
        task_id = final["task_id"]
        assert final["state"] == "success", final
        assert final["worker_id"] == "staying"
        terminals = [s for s in history[task_id] if s["state"] in ("success", "failed", "cancelled", "timeout")]
        assert len(terminals) == 1
        assert any(s.get("handed_back_by") == "leaving" for s in history[task_id])


async def test_second_signal_stops_waiting_for_running_jobs(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, drain_timeout=300, kill_grace=2)
    async with client_for(broker, group) as client:
        async with running_worker(settings) as worker:
            job = await client.submit({"task_id": "hurry", **sleeper(281)})
            async for status in job.statuses():
                if status["state"] == "running":
                    break
            worker.request_shutdown()
            worker.request_shutdown(hurry=True)
            with trio.fail_after(20):
                final = await job.wait()
        assert processes_mentioning("sleep 281") == []
    assert final["state"] == "cancelled"
    assert final["error_message"] == "cancelled: worker shutting down"


def journaled_worker(
    tmp_path: Path, broker: Broker, playbook_dir: Path, group: str, worker_id: str, **worker: Any
) -> tuple[list[str], Path]:
    """The arguments of a worker with a journal, and the journal's directory."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = worker_config(
        tmp_path / "w.json", broker, playbook_dir, group, worker_id=worker_id, state_dir=str(state_dir), **worker
    )
    return ["run", "-c", str(config)], state_dir


@unprivileged_lane
async def test_killed_worker_restarted_on_its_state_dir_settles_every_job(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    # A client waits up to 1.5 x lost_after (and a margin) for another worker to take the job
    # over before it calls the job lost: short here, where no other worker is.
    arguments, state_dir = journaled_worker(
        tmp_path, broker, playbook_dir, group, "phoenix", heartbeat_interval=1, lost_after=4
    )
    seconds = unique_seconds(277)
    # Named for this test alone: its lanes may run side by side, and run directories are found by name.
    crash_running, crash_queued = f"{group}-crash-running", f"{group}-crash-queued"
    earlier_run_dirs = _run_directories(crash_running)
    async with client_for(broker, group) as client:
        async with deployment.process(*arguments) as killed:
            await wait_online(client, "phoenix")
            running = await client.submit({"task_id": crash_running, **sleeper(seconds)})
            async for status in running.statuses():
                if status.get("current_task") == "Sleep for a while":
                    break
            # The task has started; its command may take a moment more under load.
            with trio.fail_after(30):
                while not processes_mentioning(f"sleep {seconds}"):  # noqa: ASYNC110 - /proc has no event to wait on
                    await trio.sleep(0.05)
            await client.submit({"task_id": crash_queued, **QUICK})
            killed.process.send_signal(signal.SIGKILL)
            with trio.fail_after(10):
                await killed.process.wait()
            with pytest.raises(JobLost, match=f"job {crash_running} is lost: its worker phoenix went offline"):
                with trio.fail_after(20):
                    await running.wait()
            watch = await trio.run_process(
                [EXECUTABLE, "watch", crash_running, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert watch.returncode == 5
            assert f"job {crash_running} is lost: its worker phoenix went offline" in watch.stderr.decode()
        # Ansible outlived the worker it belonged to (killed alone, as systemd's KillMode=process
        # or supervisord do): the restarted worker must end it before it reports the job.
        assert processes_mentioning(f"sleep {seconds}"), "the scenario needs the old run still alive"
        run_dirs = _run_directories(crash_running) - earlier_run_dirs
        assert run_dirs
        async with deployment.process(*arguments) as restarted:
            await wait_online(client, "phoenix")
            running_again = await client.follow(crash_running)
            queued_again = await client.follow(crash_queued)
            with trio.fail_after(60):
                interrupted = await running_again.wait()
                left_over = processes_mentioning(f"sleep {seconds}")
                ran = await queued_again.wait()
            assert await restarted.stop() == 0
    assert interrupted["state"] == "failed"
    assert interrupted["error_message"] == "interrupted: worker restarted"
    assert interrupted["worker_id"] == "phoenix"
    assert left_over == [], "the old run was still alive when the job was reported"
    assert not any(path.exists() for path in run_dirs)
    assert ran["state"] == "success"
    # The journal keeps only what is not settled yet: nothing, now.
    assert _journal_states(state_dir) == []


FAULTS = {
    "no-stats": (
        "import json, os\nfd = os.open(os.environ['ANSIBLE_WORKER_EVENT_FIFO'], os.O_WRONLY)\n"
        "os.write(fd, (json.dumps({'event': 'playbook_on_play_start', 'play': 'p'}) + '\\n').encode())\n",
        "ansible-playbook exited 0 without its final statistics: the run was cut short",
    ),
    "garbage": (
        "import os\nfd = os.open(os.environ['ANSIBLE_WORKER_EVENT_FIFO'], os.O_WRONLY)\n"
        'os.write(fd, b\'{not json\\n{"event": "playbook_on_stats", "hosts": {}}\\n\')\n',
        "ansible-playbook sent 1 unreadable event lines (exit code 0): its counts cannot be trusted",
    ),
    "silent": (
        "print('I never open the FIFO')\n",
        "ansible-playbook exited 0 but sent no events: the event plugin did not run",
    ),
    # A failing run is reported by what failed, even when its event stream is damaged too.
    "garbage-and-failure": (
        "import os, sys\nfd = os.open(os.environ['ANSIBLE_WORKER_EVENT_FIFO'], os.O_WRONLY)\n"
        "os.write(fd, b'{not json\\n')\nprint('[ERROR]: the inventory is unreadable')\nsys.exit(2)\n",
        "ansible-playbook exited with code 2: [ERROR]: the inventory is unreadable",
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_ansible_faults_fail_the_job_with_a_reason(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, fault: str
) -> None:
    # Stand-ins for ansible-playbook: real Ansible cannot be made to misbehave like this.
    script, message = FAULTS[fault]
    fake = tmp_path / "fake-ansible-playbook"
    fake.write_text(f"#!{sys.executable}\n{script}")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    settings = make_settings(broker.port, playbook_dir, group, ansible_playbook_path=str(fake))
    async with running_worker(settings), client_for(broker, group) as client:
        with trio.fail_after(20):
            final = await (await client.submit({"task_id": f"fault-{fault}", **QUICK})).wait()
    assert final["state"] == "failed"
    assert final["error_message"] == message


async def test_ansible_killed_from_outside(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group)), client_for(broker, group) as client:
        job = await client.submit({"task_id": "killed", **sleeper(271)})
        playbook = str(playbook_dir / "sleep.yml")
        with trio.fail_after(30):
            # This job's ansible-playbook, once it runs the task (so the job is well under way).
            while not processes_mentioning("sleep 271") or not processes_mentioning(playbook):  # noqa: ASYNC110
                await trio.sleep(0.05)
        leader = min(int(line.split(":")[0]) for line in processes_mentioning(playbook))
        os.kill(leader, signal.SIGKILL)
        final = await job.wait()
        after = await (await client.submit({"task_id": "after-kill", **QUICK})).wait()
    assert final["state"] == "failed"
    assert final["error_message"].startswith("ansible-playbook was killed by SIGKILL")
    assert after["state"] == "success"


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


async def test_megabytes_of_output_keep_memory_bounded(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    fake = tmp_path / "chatty-ansible-playbook"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "for _ in range(64):\n    sys.stdout.write('x' * 1048575 + '\\n')\n"
        "fd = os.open(os.environ['ANSIBLE_WORKER_EVENT_FIFO'], os.O_WRONLY)\n"
        "os.write(fd, (json.dumps({'event': 'playbook_on_stats', 'hosts': {}}) + '\\n').encode())\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    config = worker_config(
        tmp_path / "w.json", broker, playbook_dir, group, ansible_playbook_path=str(fake), worker_id="chatty"
    )
    async with client_for(broker, group) as client:
        process = await trio.lowlevel.open_process([EXECUTABLE, "run", "-c", str(config)], stderr=subprocess.DEVNULL)
        try:
            await wait_online(client, "chatty")
            final = await (await client.submit({"task_id": "chatty", **QUICK})).wait()
            peak_kib = peak_rss_kib(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                await process.wait()
    assert final["state"] == "success"
    # 64 MiB went through the pipe; the worker kept its usual size plus the 1 MiB tail.
    assert peak_kib < 80 * 1024


async def test_unacknowledged_terminal_status_is_published_after_a_restart(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    arguments, state_dir = journaled_worker(tmp_path, broker, playbook_dir, group, "keeper")
    command = [EXECUTABLE, *arguments]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.DEVNULL)
    try:
        async with client_for(broker, group) as client:
            await wait_online(client, "keeper")
            job = await client.submit({"task_id": "unheard", **sleeper(2.31)})
            async for status in job.statuses():
                if status.get("current_task") == "Sleep for a while":
                    break
        # The job ends while the broker is away: its success is journaled, never acknowledged.
        broker.stop()
        with trio.fail_after(30):
            while processes_mentioning("sleep 2.31"):  # noqa: ASYNC110 - another process has no event
                await trio.sleep(0.05)
        with trio.fail_after(30):
            while _journal_states(state_dir) != ["success"]:  # noqa: ASYNC110 - a file another process writes
                await trio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    # Mosquitto here keeps nothing across a restart: only the journal can tell the outcome.
    broker.start()
    restarted = await trio.lowlevel.open_process(command, stderr=subprocess.DEVNULL)
    try:
        async with client_for(broker, group) as client:
            with trio.fail_after(30):
                final = await (await client.follow("unheard")).wait()
    finally:
        restarted.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await restarted.wait()
    assert final["state"] == "success"
    assert final["worker_id"] == "keeper"
    assert _journal_states(state_dir) == []


def _run_directories(task_id: str) -> set[Path]:
    """The private run directories of `task_id` in the default temporary directory."""
    return set(Path(tempfile.gettempdir()).glob(f"ansible-worker-{task_id}-*"))


def _journal_states(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "journal.sqlite3") as db:
        return [state for (state,) in db.execute("SELECT state FROM jobs")]
