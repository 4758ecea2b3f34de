"""How a test deploys the worker: as the test process (root), or as the image's unprivileged user.

The test process stays root throughout: it is the operator, who makes the directories, owns
the playbooks and runs the broker and the SSH hosts. Only the worker changes with the
deployment:

- `root`: the worker in the test process, as most tests run it.
- `unprivileged`: `ansible-worker run -c FILE` as uid 10001 (the Containerfile's user) with
  a `HOME` of its own, on the system Python (a venv of `/usr/bin/python3` that the user can
  read, with this project installed from the lock, not in editable mode); playbooks owned by
  root that it may read but not write; its state, run and source cache directories its own;
  host locks on, as shipped.
- `image-env`: the same, with the environment of the image (`HOME`, `ANSIBLE_HOME`,
  `ANSIBLE_LOCAL_TEMP`, `ANSIBLE_REMOTE_TEMP` in a scratch directory, as on its `/tmp`).

Tests choose the deployments with `@lane`; their `tmp_path` is then a directory under
`/tmp` that the worker's user can reach (pytest's own is private to root). A test builds its
files as the operator; `give` makes a directory the worker's own, `seal` makes a playbook tree
read-only to every deployment (root's worker included: see `seal`), and `run` runs a command
as the worker's user would (`ansible-config`, a script on the worker's Python).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
import yaml
from pydantic import SecretStr

from ansible_worker.controller.client import open_client, target_from_url
from ansible_worker.ops.config import Settings
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.service import Worker
from tests.lane_machine import (
    REPO,
    SYSTEM_PYTHON,
    WORKER_UID,
    chown_tree,
    containerfile,
    ensure_worker_user,
    give_directory,
    image_environment,
    let_worker_read,
    owned_by_worker,
    private_base,
    remove_base,
    system_venv,
)

if TYPE_CHECKING:
    from tests.conftest import WorkerProcess

__all__ = ["REPO", "SYSTEM_PYTHON", "Deployment", "containerfile", "lane", "lane_deployment", "unprivileged_lane"]

# `-m lane` selects the unprivileged runs alone.
lane = pytest.mark.parametrize(
    "deployment",
    ["root", *(pytest.param(name, marks=pytest.mark.lane) for name in ("unprivileged", "image-env"))],
    indirect=True,
)
# For the long scenarios whose subject is the group, not Ansible's environment: as root, and
# as the image's user with read-only playbooks (the image's environment adds nothing to them).
unprivileged_lane = pytest.mark.parametrize(
    "deployment", ["root", pytest.param("unprivileged", marks=pytest.mark.lane)], indirect=True
)


class DeployedWorker:
    """A running worker as a test sees it, however it was deployed: its id, its presence, its log, its stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker: Worker | None = None,
        process: WorkerProcess | None = None,
        log: list[str] | None = None,
    ) -> None:
        self.worker_id = settings.worker.worker_id
        self._port = settings.mqtt.port
        self._topics = Topics(settings.worker.topic_prefix, settings.worker.group_name)
        self._worker = worker
        self.process = process
        self._log = log if log is not None else []
        self._signals = 0

    @property
    def pid(self) -> int:
        """The worker's process: this one, or the `ansible-worker run` it was deployed as."""
        if self.process is not None:
            return self.process.process.pid
        return os.getpid()

    @property
    def log(self) -> list[str]:
        """What the worker has logged so far, from INFO up: its stderr, or its records in this process."""
        return self.process.lines if self.process is not None else self._log

    def request_shutdown(self, *, hurry: bool = False) -> None:
        """Begin a graceful shutdown, as SIGTERM does; `hurry` as a second SIGTERM does."""
        if self._worker is not None:
            self._worker.request_shutdown(hurry=hurry)
            return
        assert self.process is not None
        for _ in range(self._signals, 2 if hurry else 1):
            self.process.process.send_signal(signal.SIGTERM)
            self._signals += 1

    async def starts(self, *, jobs_done: int) -> tuple[int, int]:
        """(warm, cold) starts from the worker's presence, once it counts `jobs_done` finished jobs."""
        target = target_from_url(f"mqtt://127.0.0.1:{self._port}", group=self._topics.group)
        async with open_client(target) as client:
            receive = await client.subscribe([self._topics.worker(self.worker_id)])
            with trio.fail_after(30):
                async for message in receive:
                    presence = json.loads(message.payload)
                    if presence["jobs_done"] >= jobs_done:
                        return presence["warm_starts"], presence["cold_starts"]
        raise AssertionError("the presence subscription ended")

    async def metric(self, sample: str) -> float:
        """One sample of the worker's `/metrics`, as Prometheus scrapes it (the settings must enable `http`)."""
        from tests.ops.test_operations import http_get, metric

        if self._worker is not None:
            port = self._worker.http_port
        else:
            assert self.process is not None
            line = await self.process.wait_for_line("health and metrics endpoint on http://")
            found = re.search(r"http://[^/]+:(\d+)/", line)
            port = int(found.group(1)) if found else None
        assert port is not None, "the worker serves no /metrics: enable worker.http"
        status, body = await http_get(port, "/metrics")
        assert status == 200, body
        return metric(body, sample)


class _Records(logging.Handler):
    """The worker's log records in this process, as its stderr would carry them (messages only)."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextmanager
def _recording(into: list[str]) -> Iterator[None]:
    """Keep what the worker's loggers say from INFO up, as `ansible-worker run` logs it by default."""
    logger = logging.getLogger("ansible_worker")
    handler = _Records(into)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def _environment_of_this_process(extra: Mapping[str, str]) -> Iterator[None]:
    """`extra` in this process's environment while a worker runs in it; the old values back afterwards."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclasses.dataclass(frozen=True)
class Deployment:
    """One way of running the worker; see the module docstring."""

    name: str
    # For the unprivileged ones: the directory of the test's files, and the venv the worker runs from.
    base: Path | None = None
    venv: Path | None = None
    # Trees made read-only by `seal`, made writable again when the test ends.
    sealed: list[Path] = dataclasses.field(default_factory=list, compare=False)

    @property
    def unprivileged(self) -> bool:
        return self.base is not None

    @property
    def scratch(self) -> Path | None:
        """The image's `/tmp` of the `image-env` deployment (where its `ANSIBLE_HOME` is), else None."""
        return self.base / "scratch" if self.name == "image-env" and self.base is not None else None

    def hand_over(self, directory: Path) -> None:
        """Give `directory` to the worker's user, as a deployment does with a checkout that jobs `git pull`."""
        if self.unprivileged:
            chown_tree(directory, WORKER_UID, WORKER_UID)

    def give(self, directory: Path) -> Path:
        """`directory` (made if missing) as one of the worker's own: its HOME, a place for its logs."""
        if self.unprivileged:
            give_directory(directory)
        else:
            directory.mkdir(parents=True, exist_ok=True)
        return directory

    def seal(self, tree: Path) -> Path:
        """Make the playbook tree `tree` read-only, as a deployment mounts it: the operator's, writable by no one.

        Unprivileged, the worker could not write a tree of root's anyway; the write bits go
        too. Root writes whatever the modes say, so each entry is also made immutable
        (`chattr +i`, on a file system that has the flag): a read-only volume for the worker
        in the test process. `unseal` (or the end of the test) undoes both.
        """
        self.sealed.append(tree)
        for path in [tree, *tree.rglob("*")]:
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-R", "+i", str(tree)], capture_output=True, check=False)
        return tree

    def unseal(self, tree: Path) -> None:
        """Undo `seal`: the operator may change or remove the tree again."""
        if tree not in self.sealed or not tree.exists():
            return
        self.sealed.remove(tree)
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-R", "-i", str(tree)], capture_output=True, check=False)
        for path in [tree, *tree.rglob("*")]:
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)

    def executable(self, name: str) -> str:
        """The program `name` of the Python the worker runs on (`ansible-config`, `python`...)."""
        from tests.conftest import ANSIBLE_PLAYBOOK

        return str((self.venv / "bin" if self.venv is not None else Path(ANSIBLE_PLAYBOOK).parent) / name)

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment the worker's process has, with `extra` (what `running(env=...)` adds)."""
        base = self._environment() if self.unprivileged else dict(os.environ)
        return {**base, **(extra or {})}

    async def run(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[bytes]:
        """`argv` as the worker's user runs it (root in the test process's deployment); its output captured.

        Cancellation: as `trio.run_process` (the caller bounds the wait).
        """
        options: dict[str, Any] = {}
        if self.unprivileged:
            options = {"user": WORKER_UID, "group": WORKER_UID, "extra_groups": [], "umask": 0o022}
        return await trio.run_process(
            list(argv), cwd=cwd, env=dict(env), capture_stdout=True, capture_stderr=True, check=False, **options
        )

    @asynccontextmanager
    async def running(
        self, settings: Settings, *, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[DeployedWorker]:
        """A worker with `settings`, connected and subscribed; shut down gracefully on exit.

        `env` adds to the environment the operator starts the worker with.
        """
        if not self.unprivileged:
            from tests.conftest import running_worker

            log: list[str] = []
            with _environment_of_this_process(env or {}), _recording(log):
                async with running_worker(settings) as worker:
                    yield DeployedWorker(settings, worker=worker, log=log)
            return
        assert self.base is not None
        # As deployed, host locks are on (the default), though most tests turn them off for the
        # worker in this process, which runs several of their jobs on the one local host at once.
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"host_locks": True})})
        document = _revealed(settings.model_dump())
        # Nothing is lost on the way to the file: the worker reads the same settings back.
        assert Settings.model_validate(document) == settings
        config = self.base / f"settings-{settings.worker.worker_id}.json"
        # It holds the test's secrets in clear: root's alone (the worker gets a copy of its own).
        config.touch(mode=0o600)
        config.write_text(json.dumps(document))
        async with self.process("run", "-c", str(config), env=dict(env or {})) as process:
            await process.wait_for_line("connected to broker")
            handle = DeployedWorker(settings, process=process)
            try:
                yield handle
            finally:
                handle.request_shutdown()
                code = await process.wait_exit()
            assert code == 0, "\n".join(process.lines[-30:])

    @asynccontextmanager
    async def process(self, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[WorkerProcess]:
        """`ansible-worker ARGS` as this deployment's operator starts it; killed if still running at the end.

        Unprivileged, a `-c FILE` among the arguments is set up as the operator would: the
        directories it names for the worker are made the worker's, the files it names made
        readable to it, and it runs the system venv's `ansible-playbook`.
        """
        from tests.conftest import worker_process

        if not self.unprivileged:
            async with worker_process(*args, env=env) as process:
                yield process
            return
        arguments = list(args)
        if "-c" in arguments:
            index = arguments.index("-c") + 1
            arguments[index] = str(self._deploy_config(Path(arguments[index])))
        assert self.venv is not None
        environment = {**self._environment(), **(env or {})}
        async with worker_process(
            *arguments,
            executable=str(self.venv / "bin" / "ansible-worker"),
            env=environment,
            cwd=str(self.base),
            user=WORKER_UID,
            group=WORKER_UID,
            extra_groups=[],
            umask=0o022,
        ) as process:
            yield process

    def _environment(self) -> dict[str, str]:
        """What the worker's process starts with: nothing of the test process's own environment."""
        assert self.base is not None
        assert self.venv is not None
        path = f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        if self.name == "unprivileged":
            home = self.base / "home"
            if not home.exists():
                home.mkdir(mode=0o700)
                os.chown(home, WORKER_UID, WORKER_UID)
            return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"}
        # The image's ENV, with a scratch directory of the worker's own as its /tmp (the pod's
        # emptyDir); as in the image, HOME does not exist yet.
        scratch = self.base / "scratch"
        if not scratch.exists():
            scratch.mkdir(mode=0o700)
            os.chown(scratch, WORKER_UID, WORKER_UID)
        image = {name: re.sub(r"^/tmp(?=/|$)", str(scratch), value) for name, value in image_environment().items()}
        assert {"HOME", "ANSIBLE_HOME", "ANSIBLE_LOCAL_TEMP"} <= image.keys()
        return {"PATH": path, **image}

    def _deploy_config(self, path: Path) -> Path:
        """The config file at `path` as the operator deploys it for the worker's user; a copy, the worker's own."""
        from tests.conftest import ANSIBLE_PLAYBOOK

        assert self.base is not None
        assert self.venv is not None
        document = yaml.safe_load(path.read_text())
        worker = document["worker"]
        if worker.get("ansible_playbook_path") == ANSIBLE_PLAYBOOK:
            worker["ansible_playbook_path"] = str(self.venv / "bin" / "ansible-playbook")
        playbooks = Path(worker["playbook_directory"])
        if not owned_by_worker(playbooks):
            info = playbooks.stat()
            assert info.st_uid == 0, f"{playbooks} is root's, read-only to the worker"
            assert not info.st_mode & 0o022, f"{playbooks} is root's, read-only to the worker"
        for key in ("state_dir", "run_directory", "source_cache"):
            if worker.get(key):
                give_directory(Path(worker[key]))
        for file in _files_named(document):
            if file.is_relative_to(self.base):
                let_worker_read(file)
        deployed = path.with_name(path.name + ".deployed.json")
        deployed.touch(mode=0o600)
        os.chown(deployed, WORKER_UID, WORKER_UID)
        deployed.write_text(json.dumps(document))
        return deployed


def _revealed(tree: Any) -> Any:
    """Settings as plain data for a config file: secrets in clear, paths as strings."""
    if isinstance(tree, SecretStr):
        return tree.get_secret_value()
    if isinstance(tree, Path):
        return str(tree)
    if isinstance(tree, dict):
        return {key: _revealed(value) for key, value in tree.items() if value is not None}
    if isinstance(tree, list | tuple):
        return [_revealed(value) for value in tree]
    return tree


def _files_named(tree: Any) -> Iterator[Path]:
    """Existing files that a config names (keys, known_hosts, password files), wherever they are."""
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _files_named(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _files_named(value)
    elif isinstance(tree, str) and tree.startswith("/") and "\n" not in tree and Path(tree).is_file():
        yield Path(tree)


def lane_deployment(name: str) -> Iterator[Deployment]:
    """The deployment `name` for one test; skipped, with the reason, where the test process is not root."""
    if name == "root":
        deployment = Deployment(name)
        try:
            yield deployment
        finally:
            for tree in list(deployment.sealed):
                deployment.unseal(tree)
        return
    if os.geteuid() != 0:
        pytest.skip(f"the {name} deployment needs root: it starts the worker as uid {WORKER_UID}")
    ensure_worker_user()
    venv = system_venv()
    base = private_base()
    deployment = Deployment(name, base=base, venv=venv)
    try:
        yield deployment
    finally:
        for tree in list(deployment.sealed):
            deployment.unseal(tree)
        remove_base(base)
