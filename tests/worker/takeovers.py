"""What the tests of lost workers share: a job that marks its runs, two worker processes in a group, and ways to end them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import trio

from ansible_worker.controller.client import Client
from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.signing import Signer
from testing.broker import Broker
from tests.conftest import (
    Controller,
    WorkerProcess,
    client_for,
    open_controller,
    processes_mentioning,
    wait_online,
    worker_config,
)
from tests.deployment import Deployment

HEARTBEAT = 1
LOST_AFTER = 6
# How long after `lost_after` a takeover may take here (the look every second, the
# takeover's round trips, a playbook run on a loaded machine).
TAKEOVER_BOUND = 40

MARKED_SLEEP = """\
- name: Mark the run, then sleep
  hosts: host1
  gather_facts: false
  tasks:
    - name: Mark the run
      ansible.builtin.shell: echo ran >> "$MARKER"
      environment:
        MARKER: "{{ marker }}"
      changed_when: true
    - name: Sleep for a while
      ansible.builtin.command: "sleep {{ seconds }}"
"""


def marked(marker: Path, seconds: float | str = 0) -> dict[str, Any]:
    """A job that appends to `marker` when it runs, then sleeps `seconds`."""
    return {
        "playbook": "marked_sleep.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"marker": str(marker), "seconds": str(seconds)},
    }


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


@dataclass(frozen=True)
class Scene:
    """Where one test's worker processes run: its broker and group, its playbooks and files, and how they are deployed."""

    broker: Broker
    group: str
    playbook_dir: Path
    tmp_path: Path
    deployment: Deployment

    def settings(self, worker_id: str, **worker: Any) -> Path:
        """The settings file of worker `worker_id`: heartbeats every HEARTBEAT, lost after LOST_AFTER, then `worker`."""
        return worker_config(
            self.tmp_path / f"{worker_id}.json",
            self.broker,
            self.playbook_dir,
            self.group,
            worker_id=worker_id,
            heartbeat_interval=HEARTBEAT,
            status_interval=0.1,
            # Host locks freed by a takeover are tests/worker/test_host_locks.py's, which turns them on.
            **{"lost_after": LOST_AFTER, "host_locks": False, **worker},
        )

    def markers(self) -> Path:
        """A directory the workers may write, for `marked` jobs to mark their runs in; the playbook beside the others."""
        (self.playbook_dir / "marked_sleep.yml").write_text(MARKED_SLEEP)
        markers = self.tmp_path / "markers"
        markers.mkdir()
        return self.deployment.give(markers)


class Alone(NamedTuple):
    """A group of one worker process, and the controller and client that watch it."""

    controller: Controller
    client: Client
    worker: WorkerProcess


@contextlib.asynccontextmanager
async def open_lone_worker(
    scene: Scene, worker_id: str, *, settings: Path | None = None, signer: Signer | None = None, **worker: Any
) -> AsyncIterator[Alone]:
    """The group's controller, a client (signing with `signer`), and worker `worker_id` started and online.

    The worker runs on `settings`, else on `scene.settings(worker_id, **worker)`.
    """
    path = settings or scene.settings(worker_id, **worker)
    async with (
        open_controller(scene.broker, scene.group) as controller,
        client_for(scene.broker, scene.group, signer=signer) as client,
        scene.deployment.process("run", "-c", str(path)) as process,
    ):
        await wait_online(client, worker_id)
        yield Alone(controller, client, process)


@contextlib.asynccontextmanager
async def open_second_worker(
    scene: Scene, client: Client, worker_id: str, *, settings: Path | None = None, **worker: Any
) -> AsyncIterator[WorkerProcess]:
    """Worker `worker_id` started beside the first and online; once the block is done, it must stop cleanly (exit 0).

    The worker runs on `settings`, else on `scene.settings(worker_id, **worker)`.
    """
    path = settings or scene.settings(worker_id, **worker)
    async with scene.deployment.process("run", "-c", str(path)) as process:
        await wait_online(client, worker_id)
        yield process
        assert await process.stop() == 0


@contextlib.contextmanager
def paused(worker: WorkerProcess) -> Iterator[None]:
    """`worker` stopped (SIGSTOP) for the block, and running again (SIGCONT) after it, however the block ends."""
    worker.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        worker.process.send_signal(signal.SIGCONT)


async def wait_runs_ended(seconds: str) -> None:
    """Until no `sleep {seconds}` is left (at most 30 s): the job's run has ended, whoever ended it."""
    with trio.fail_after(30):
        while processes_mentioning(f"sleep {seconds}"):  # noqa: ASYNC110 - /proc has no event
            await trio.sleep(0.1)


async def wait_sleeping(seconds: str, controller: Controller | None = None, task_id: str = "") -> list[int]:
    """The pids of the job's `sleep`, once it runs; what `task_id` said instead, if it never does."""
    with trio.move_on_after(60):
        while not (found := processes_mentioning(f"sleep {seconds}")):  # /proc has no event to wait on
            if controller is not None and controller.terminal_statuses(task_id):
                break
            await trio.sleep(0.05)
        else:
            return [int(line.split(":", 1)[0]) for line in found]
    said = controller.statuses.get(task_id) if controller is not None else None
    raise AssertionError(f"no `sleep {seconds}` ran; {task_id or 'the job'} said {said}")


async def hold_jobs(controller: Controller, markers: Path, group: str, seconds: str) -> tuple[str, list[str]]:
    """One job running on the only worker online, and two waiting behind it."""
    running = f"{group}-running"
    await controller.submit({"task_id": running, **marked(markers / running, seconds)})
    await controller.wait_for(running, {"running"})
    await wait_sleeping(seconds, controller, running)
    # Its counts so far are out: the mark changed something.
    with trio.fail_after(30):
        while not any(s.get("tasks_changed") == 1 for s in controller.statuses[running]):  # noqa: ASYNC110
            await trio.sleep(0.05)
    queued = [f"{group}-queued-{n}" for n in (1, 2)]
    for task_id in queued:
        await controller.submit({"task_id": task_id, **marked(markers / task_id)})
        await controller.wait_for(task_id, {"queued"})
    return running, queued


def kill_for_good(pid: int, seconds: str) -> None:
    """SIGKILL the worker and its job's whole process group, as a node that dies takes them all."""
    for line in processes_mentioning(f"sleep {seconds}"):
        with_pid = int(line.split(":", 1)[0])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(with_pid), signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


async def settled_once(controller: Controller, task_ids: list[str], within: float) -> dict[str, dict[str, Any]]:
    """Each job's terminal status, once all have one; then a moment more, to see that none comes twice."""
    with trio.fail_after(within):
        ended = {task_id: await controller.wait_terminal(task_id, within) for task_id in task_ids}
    # Long enough for a second survivor, or a fenced worker, to publish what it should not.
    await trio.sleep(LOST_AFTER)
    await controller.sync()
    for task_id in task_ids:
        assert len(controller.terminal_statuses(task_id)) == 1, controller.statuses[task_id]
    return ended


async def read_retained_copies(broker: Broker, group: str, task_ids: list[str]) -> dict[str, bytes]:
    """The request copies the broker retains for `task_ids`."""
    found: dict[str, bytes] = {}
    for task_id in task_ids:
        copy = await retained(broker, f"ansible/{group}/tasks/{task_id}/request")
        if copy is not None:
            found[task_id] = copy
    return found


async def retained(broker: Broker, topic: str) -> bytes | None:
    """What the broker retains on `topic` now."""
    reader = "reader-" + uuid.uuid4().hex[:8]
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id=reader)
    found: bytes | None = None
    async with open_mqtt_link(options) as link:
        sync = f"{reader}/sync"
        await link.subscribe(topic, 1)
        await link.subscribe(sync, 1)
        await link.publish(sync, b"end", qos=1)
        with trio.fail_after(10):
            async for message in link.messages():
                if message.topic == sync:
                    break
                found = message.payload or None
    return found


async def forge(broker: Broker, topic: str, document: dict[str, Any], *, retain: bool = True) -> None:
    """Publish `document` on `topic` as someone who may write every topic of the group, but holds no worker key."""
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="forger")
    async with open_mqtt_link(options) as link:
        await link.publish(topic, json.dumps(document).encode(), qos=1, retain=retain)


async def forge_clear(broker: Broker, topic: str) -> None:
    """Delete the message retained on `topic`, as anyone who may write it can."""
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="eraser")
    async with open_mqtt_link(options) as link:
        await link.publish(topic, b"", qos=1, retain=True)
