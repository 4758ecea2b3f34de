"""A job whose first publish is lost still runs, exactly once: the client publishes it again.

The workers' sessions are clean, so a job the broker accepted while no worker of the group
was subscribed (one starting, or all of them reconnecting after a broker restart) reaches
nobody. The client publishes the same bytes again until a status of the job arrives. One
worker here: the group-wide "run a task_id once" is another test's business.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.client import Client, JobHandle
from ansible_worker.mqtt.link import InboundMessage
from ansible_worker.protocol.signing import Signer
from tests.conftest import Broker, client_for, make_settings, require_signatures, running_worker

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")
APPEND = """\
- name: Append a line, so a test can count how often the job ran
  hosts: host1
  gather_facts: false
  tasks:
    - name: Append to the marker file
      ansible.builtin.shell: "echo ran >> {{ marker | quote }}"
"""


def counting_job(playbook_dir: Path, task_id: str) -> tuple[dict[str, Any], Path]:
    """A job that appends a line to a marker file each time it runs, and that file."""
    (playbook_dir / "append.yml").write_text(APPEND)
    marker = playbook_dir.parent / f"{task_id}.runs"
    job = {
        "task_id": task_id,
        "playbook": "append.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"marker": str(marker)},
    }
    return job, marker


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


class Copies:
    """Every copy of a job published on the group's tasks topic, as a plain subscriber sees it."""

    def __init__(self, observer: Client, feed: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        self.observer = observer
        self.feed = feed
        self.payloads: list[bytes] = []

    @classmethod
    async def watch(cls, observer: Client) -> Copies:
        return cls(observer, await observer.subscribe([observer.topics.tasks], qos=2))

    async def next(self, within: float = 10) -> bytes:
        with trio.fail_after(within):
            message = await self.feed.receive()
        self.payloads.append(message.payload)
        return message.payload

    async def until(self, count: int) -> list[bytes]:
        while len(self.payloads) < count:
            await self.next()
        return self.payloads

    def take_arrived(self) -> list[bytes]:
        while True:
            try:
                self.payloads.append(self.feed.receive_nowait().payload)
            except trio.WouldBlock:
                return self.payloads


def retries_logged(caplog: pytest.LogCaptureFixture, task_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ansible_worker.controller.client" and f"publishing task {task_id} again" in r.getMessage()
    ]


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
async def test_a_job_published_before_any_worker_subscribed_runs_once(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, signed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    security = require_signatures(keys) if signed else None
    signer = Signer.from_file(keys / "alice.key") if signed else None
    settings = make_settings(broker.port, playbook_dir, group, security=security, worker_id="late")
    job, marker = counting_job(playbook_dir, "late-worker")
    async with client_for(broker, group) as observer, client_for(broker, group, signer=signer) as client:
        copies = await Copies.watch(observer)
        done = trio.Event()

        async def worker_after_the_first_copy() -> None:
            # The broker has routed the first copy (to this observer, and to no worker):
            # only now does a worker subscribe.
            await copies.next()
            async with running_worker(settings):
                await done.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker_after_the_first_copy)
            with trio.fail_after(60):
                handle = await client.submit(job, retry_after=1, answer_within=60)
                final = await handle.wait()
            done.set()
        with trio.fail_after(10):
            payloads = await copies.until(handle.attempts)
    assert final["state"] == "success", final
    assert final["worker_id"] == "late"
    assert runs(marker) == 1
    assert handle.attempts >= 2
    # The very same bytes each time: same task_id, and signed once, not re-signed.
    assert len(set(payloads)) == 1
    if signed:
        assert "signature" in json.loads(payloads[0])
    logged = retries_logged(caplog, "late-worker")
    assert logged[0] == "no worker answered within 1s; publishing task late-worker again (attempt 2 of 60)"


async def test_a_job_lost_in_a_broker_restart_runs_once(
    broker: Broker, playbook_dir: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(broker.port, playbook_dir, group, worker_id="after-restart")
    job, marker = counting_job(playbook_dir, "restart-lost")
    async with client_for(broker, group) as observer, client_for(broker, group) as client:
        copies = await Copies.watch(observer)
        submitted: list[JobHandle] = []

        async def submit() -> None:
            submitted.append(await client.submit(job, retry_after=2, answer_within=60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            # The broker accepted the job, then restarts (keeping nothing) before any worker had it.
            first = await copies.next()
            broker.stop()
            broker.start()
            async with running_worker(settings):
                with trio.fail_after(60):
                    while not submitted:  # noqa: ASYNC110 - the submitting task's result
                        await trio.sleep(0.02)
                    final = await submitted[0].wait()
    handle = submitted[0]
    assert final["state"] == "success", final
    assert runs(marker) == 1
    assert client.session.connections >= 2
    assert handle.attempts >= 2
    assert json.loads(first)["task_id"] == "restart-lost"
    logged = retries_logged(caplog, "restart-lost")
    assert logged[0] == (
        "the connection to the broker was lost before a worker answered;"
        " publishing task restart-lost again (attempt 2 of 30)"
    )


async def test_no_retry_when_the_worker_answers_in_time(
    broker: Broker, playbook_dir: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(broker.port, playbook_dir, group)
    job = {"task_id": "answered", "playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 2}}
    async with client_for(broker, group) as observer, client_for(broker, group) as client:
        copies = await Copies.watch(observer)
        async with running_worker(settings):
            with trio.fail_after(60):
                async with await client.submit(job, retry_after=0.5, answer_within=30) as handle:
                    answer = handle.latest
                    final = await handle.wait()
        # The job took four times retry_after; it was published once all the same.
        await copies.next()
        await observer.barrier()
        assert copies.take_arrived() == copies.payloads[:1]
        # A task_id with a retained status is known to the group: that status is the answer,
        # even with no worker left to say `queued`, and the job is not published again.
        with trio.fail_after(10):
            async with await client.submit(job, retry_after=0.5, answer_within=5) as repeat:
                await copies.next()
                with trio.move_on_after(1.5):
                    await copies.next(within=2)
    assert answer is not None
    assert answer["state"] in ("queued", "running")
    assert final["state"] == "success"
    assert handle.attempts == 1
    assert repeat.attempts == 1
    assert repeat.latest is not None
    assert repeat.latest["state"] == "success"
    assert len(copies.payloads) == 2
    assert retries_logged(caplog, "answered") == []


async def test_submit_command_says_when_it_publishes_again(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group)
    _, marker = counting_job(playbook_dir, "cli-late")
    command = [
        EXECUTABLE, "submit", "append.yml", "-i", "one_host.ini", "-e", f"marker={marker}", "--task-id", "cli-late",
        "--wait", "--retry-after", "1", "--answer-within", "30",
        "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group,
    ]  # fmt: skip
    async with client_for(broker, group) as observer:
        copies = await Copies.watch(observer)
        async with trio.open_nursery() as nursery:
            result: list[subprocess.CompletedProcess[bytes]] = []

            async def submit() -> None:
                with trio.fail_after(120):
                    result.append(
                        await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
                    )

            nursery.start_soon(submit)
            await copies.next(within=30)
            async with running_worker(settings):
                with trio.fail_after(120):
                    while not result:  # noqa: ASYNC110 - the command's exit
                        await trio.sleep(0.05)
    (done,) = result
    errors = done.stderr.decode()
    assert done.returncode == 0, errors
    assert "no worker answered within 1s; publishing task cli-late again (attempt 2 of 30)" in errors.splitlines()
    assert "success  cli-late  append.yml" in done.stdout.decode()
    assert runs(marker) == 1


@pytest.mark.parametrize("flag", [["--attempts", "0"], ["--retry-after", "-1"], ["--retry-after", "soon"]])
async def test_submit_command_refuses_a_bad_retry_flag(group: str, flag: list[str]) -> None:
    command = [EXECUTABLE, "submit", "quick.yml", "-i", "one_host.ini", *flag, "--broker", "mqtt://127.0.0.1:1"]
    with trio.fail_after(60):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 2
    assert flag[0] in done.stderr.decode()
