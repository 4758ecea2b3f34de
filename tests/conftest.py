"""Fixtures: a real Mosquitto on a free loopback port, test playbooks, a controller, a worker.

Rules for every test here: brokers listen on 127.0.0.1 only, on a port the OS picked;
every wait on the network or on Ansible is bounded by `trio.fail_after`; nothing sleeps
hoping that something has happened.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.client import Client, open_client, target_from_url
from ansible_worker.mqtt.link import LinkOptions, MqttLink, open_mqtt_link
from ansible_worker.ops.config import Settings
from ansible_worker.protocol.signing import Signer, generate_key_pair
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.service import Worker

# Tests name the `broker` fixture's type from here.
from testing.broker import Broker as Broker
from tests.deployment import Deployment, lane_deployment

REPO = Path(__file__).parent.parent
PLAYBOOKS = Path(__file__).parent / "playbooks"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
TERMINAL = {"success", "failed", "cancelled", "timeout"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    directory = tmp_path / "broker"
    directory.mkdir()
    instance = Broker(directory)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """How the test runs the worker: as itself (root), unless the test is in the lane (`@lane`)."""
    yield from lane_deployment(getattr(request, "param", "root"))


@pytest.fixture
def tmp_path(tmp_path: Path, deployment: Deployment) -> Path:
    """pytest's own, or, for a worker of another user, a directory that user can reach."""
    return deployment.base or tmp_path


@pytest.fixture
def playbook_dir(tmp_path: Path) -> Path:
    target = tmp_path / "playbooks"
    shutil.copytree(PLAYBOOKS, target)
    return target


@pytest.fixture
def group() -> str:
    return "g" + uuid.uuid4().hex[:10]


def worker_values(playbook_dir: Path, group: str, **worker: Any) -> dict[str, Any]:
    """The `worker` settings of a test's worker (its runs beside the playbooks, short timeouts), and `worker`."""
    runs = playbook_dir.parent / "runs"
    runs.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "run_directory": runs,
        "group_name": group,
        "playbook_directory": playbook_dir,
        "ansible_playbook_path": ANSIBLE_PLAYBOOK,
        "kill_grace": 3,
        "drain_timeout": 1,
        "status_interval": 0.1,
        # Most tests run several jobs on the one local host side by side; the tests of host
        # locks turn them on.
        "host_locks": False,
    }
    values.update(worker)
    return values


def make_settings(
    port: int,
    playbook_dir: Path,
    group: str,
    mqtt: dict[str, Any] | None = None,
    security: dict[str, Any] | None = None,
    **worker: Any,
) -> Settings:
    """Settings for a worker on the test broker at `port`, with short timeouts."""
    values = worker_values(playbook_dir, group, **worker)
    return Settings(mqtt={"host": "127.0.0.1", "port": port, **(mqtt or {})}, worker=values, security=security or {})


def worker_config(path: Path, broker: Broker, playbook_dir: Path, group: str, **worker: Any) -> Path:
    """A config file for an `ansible-worker run` process on the test broker."""
    values = {
        "group_name": group,
        "playbook_directory": str(playbook_dir),
        "ansible_playbook_path": ANSIBLE_PLAYBOOK,
        "kill_grace": 2,
        "drain_timeout": 1,
        **worker,
    }
    path.write_text(json.dumps({"mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5}, "worker": values}))
    return path


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """A worker in this process, connected and subscribed; shut down gracefully on exit."""
    worker = Worker(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        with trio.fail_after(15):
            await worker.session.wait_connected()
        try:
            yield worker
        finally:
            worker.request_shutdown()


class Controller:
    """What a controller sees: it publishes jobs and collects every status on the wire."""

    def __init__(self, link: MqttLink, topics: Topics) -> None:
        self.link = link
        self.topics = topics
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self._changed = trio.Event()

    async def submit(self, job: dict[str, Any] | bytes) -> None:
        payload = job if isinstance(job, bytes) else json.dumps(job).encode()
        await self.link.publish(self.topics.tasks, payload, qos=2)

    async def collect(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.link.subscribe(f"{self.topics.tasks}/+/status", 1)
        task_status.started()
        async for message in self.link.messages():
            if not message.payload:
                continue
            status = json.loads(message.payload)
            self.statuses.setdefault(status["task_id"], []).append(status)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, task_id: str, states: set[str], within: float = 60) -> dict[str, Any]:
        """The first status of `task_id` whose state is in `states`, waiting at most `within` seconds."""
        with trio.fail_after(within):
            while True:
                for status in self.statuses.get(task_id, []):
                    if status["state"] in states:
                        return status
                await self._changed.wait()

    async def wait_terminal(self, task_id: str, within: float = 60) -> dict[str, Any]:
        return await self.wait_for(task_id, TERMINAL, within)

    async def sync(self) -> None:
        """Return once every status published before this call has reached this controller."""
        marker = "sync-" + uuid.uuid4().hex[:8]
        await self.link.publish(
            self.topics.status(marker), json.dumps({"task_id": marker, "state": "sync"}).encode(), qos=1
        )
        await self.wait_for(marker, {"sync"}, within=10)

    def terminal_statuses(self, task_id: str) -> list[dict[str, Any]]:
        return [status for status in self.statuses.get(task_id, []) if status["state"] in TERMINAL]


@asynccontextmanager
async def open_controller(
    broker: Broker, group: str, *, prefix: str = "ansible", **link_options: Any
) -> AsyncIterator[Controller]:
    client_id = "controller-" + uuid.uuid4().hex[:8]
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id=client_id, **link_options)
    async with open_mqtt_link(options) as link, trio.open_nursery() as nursery:
        controller = Controller(link, Topics(prefix, group))
        await nursery.start(controller.collect)
        yield controller
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client_for(broker: Broker, group: str, *, signer: Signer | None = None) -> AsyncIterator[Client]:
    """The project's own Python client, on the test broker; it signs what it sends with `signer`."""
    target = dataclasses.replace(target_from_url(f"mqtt://127.0.0.1:{broker.port}", group=group), signer=signer)
    async with open_client(target) as client:
        yield client


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Key pairs: alice, whom workers trust, mallory, whom they do not, and the workers' own."""
    directory = tmp_path / "keys"
    directory.mkdir()
    for name in ("alice", "mallory", "worker"):
        generate_key_pair(directory / f"{name}.key", directory / f"{name}.pub")
    return directory


def require_signatures(keys: Path) -> dict[str, Any]:
    """The `security` settings of a worker that trusts alice's key only, and signs its claims with its own."""
    return {
        "require_signed_tasks": True,
        "trusted_keys": {"alice": keys / "alice.pub"},
        "worker_key": keys / "worker.key",
    }


async def wait_online(client: Client, worker_id: str) -> None:
    """A shared-subscription job published before a worker subscribed would reach nobody."""
    with trio.fail_after(30):
        await client.wait_for_worker(worker_id)


def unique_seconds(whole: int) -> str:
    """A sleep's length that names one test run, so that tests in parallel never see each other's `sleep`."""
    return f"{whole}.{os.getpid()}{next(_sleeps)}"


_sleeps = itertools.count(1)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                (line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")), ""
            )
        except OSError:
            continue
        if text in cmdline and "zombie" not in state:
            found.append(f"{entry.name}: {cmdline}")
    return found


class WorkerProcess:
    """An `ansible-worker` process whose log lines a test can wait for."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()
        self._log_closed = trio.Event()

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        pending = b""
        async for chunk in self.process.stderr:
            *complete, pending = (pending + chunk).split(b"\n")
            self.lines += [line.decode(errors="replace") for line in complete]
            self._changed.set()
            self._changed = trio.Event()
        self._log_closed.set()

    async def wait_for_line(self, text: str) -> str:
        with trio.fail_after(30):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                await self._changed.wait()

    async def stop(self) -> int:
        """SIGTERM, as Kubernetes or systemd would send; the exit code, once it and the last log line came (bounded)."""
        self.process.send_signal(signal.SIGTERM)
        return await self.wait_exit()

    async def wait_exit(self) -> int:
        """The exit code, once the process has exited and its log has ended (bounded)."""
        with trio.fail_after(60):
            code = await self.process.wait()
            await self._log_closed.wait()
        return code


@asynccontextmanager
async def worker_process(
    *args: str, env: dict[str, str] | None = None, executable: str | None = None, **options: Any
) -> AsyncIterator[WorkerProcess]:
    """`ansible-worker ARGS` as an operator starts it; killed if still running at the end.

    `options` go to `subprocess.Popen` (`user`, `cwd`, `umask`...).
    """
    executable = executable or str(Path(sys.executable).parent / "ansible-worker")
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process([executable, *args], env=env, stderr=subprocess.PIPE, **options)
        worker = WorkerProcess(process)
        nursery.start_soon(worker.read_log)
        try:
            yield worker
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
