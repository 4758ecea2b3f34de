"""Run a command in a session of its own, keep its output, and end its whole process group when cancelled."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.stray_processes import kill_marked

log = logging.getLogger(__name__)


@dataclass
class ExitRecord:
    """Filled in when the process has ended, also when the run was cancelled."""

    returncode: int | None = None
    signalled_group: bool = False


class ProcessStarter(Protocol):
    """What runs a job's command: `run_process_group`, or a warm start with the same contract."""

    async def __call__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        output_fd: int,
        kill_grace: float,
        record: ExitRecord,
        marker: tuple[str, str] | None = None,
    ) -> int:
        """Run `argv` to its end and return its exit code (negative for a signal).

        Cancellation: ends the run's whole process group before it returns.
        """
        ...


async def run_process_group(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output_fd: int,
    kill_grace: float,
    record: ExitRecord,
    marker: tuple[str, str] | None = None,
) -> int:
    """Run `argv` (never through a shell) with stdout and stderr on `output_fd`.

    Input: standard input is /dev/null, so nothing can wait for a person.

    Output: the exit code (negative for a signal, as in `subprocess`). `record` holds it
    too, which is how a caller learns the code of a run it cancelled.

    Cancellation: the process is the leader of a new session, so Ansible's forks and
    anything they start share its process group. On cancel the group gets SIGTERM, then
    SIGKILL after `kill_grace` seconds; the wait for the leader is shielded, so no
    exception leaves while it lives. Members that outlive the leader are killed too, and
    so is every process whose environment holds `marker` (a variable unique to this run),
    which finds those that left the group (Ansible's workers start sessions of their own).
    The same holds when the leader was killed by a signal from elsewhere. Trio's own
    default signals only the child, which would leave Ansible's workers behind.

    Errors: `OSError` when the executable cannot be started.
    """
    process: trio.Process | None = None

    async def deliver_cancel(started: trio.Process) -> None:
        nonlocal process
        # A cancellation that arrives as the process starts may leave `nursery.start` before it
        # returns the process (the process is then ended all the same): know it from here.
        process = started
        await _terminate_group(started, kill_grace=kill_grace, record=record)

    try:
        with unwrap_lone_errors():
            async with trio.open_nursery() as nursery:
                process = await nursery.start(
                    partial(
                        trio.run_process,
                        list(argv),
                        cwd=cwd,
                        env=dict(env),
                        stdin=subprocess.DEVNULL,
                        stdout=output_fd,
                        stderr=output_fd,
                        start_new_session=True,
                        check=False,
                        deliver_cancel=deliver_cancel,
                    )
                )
    finally:
        if process is not None:
            record.returncode = process.returncode
            killed = process.returncode is not None and process.returncode < 0
            if record.signalled_group or killed:
                # The leader is gone; a straggler still in its group must not outlive the run.
                _signal_group(process.pid, signal.SIGKILL)
                if marker is not None:
                    kill_marked(*marker)
    assert record.returncode is not None
    return record.returncode


async def _terminate_group(process: trio.Process, *, kill_grace: float, record: ExitRecord) -> None:
    record.signalled_group = True
    log.debug("sending SIGTERM to process group %d", process.pid)
    _signal_group(process.pid, signal.SIGTERM)
    await trio.sleep(kill_grace)
    log.warning("process group %d still alive after %.1fs; sending SIGKILL", process.pid, kill_grace)
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # the whole group has already exited
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)


async def run_with_output(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    kill_grace: float,
    tail: OutputTail,
    record: ExitRecord,
    side_reader: Callable[[trio.Event], Awaitable[None]] | None = None,
    drain_seconds: float = 5.0,
    marker: tuple[str, str] | None = None,
    start: ProcessStarter | None = None,
) -> int:
    """`run_process_group` (or `start`, a warm start with its contract) with stdout and stderr
    kept in `tail`, and an optional second reader (the event FIFO) run alongside; readers
    get an event set when the process exits.

    The readers are shielded from the caller's cancellation so that a cancelled or timed
    out Ansible can still write its last lines instead of blocking on a full pipe while it
    is being terminated; they get `drain_seconds` after the process ends to reach end of
    file, which bounds them even when a straggler keeps a pipe open.

    Errors: `OSError` when the executable cannot be started.

    Cancellation: as `run_process_group`: the process group is ended (SIGTERM, then SIGKILL
    after `kill_grace`) and waited for, shielded. The readers then get up to `drain_seconds`,
    and both ends of the pipe are closed, before the cancellation propagates. `tail` holds
    the output so far and `record` the exit code; nothing is left running.
    """
    read_fd, write_fd = os.pipe()
    readers = trio.CancelScope(shield=True)
    exited = trio.Event()

    async def read_output() -> None:
        async with trio.lowlevel.FdStream(read_fd) as stream:
            await tail.drain(stream, exited=exited)

    async def read_all() -> None:
        with readers:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_output)
                if side_reader is not None:
                    nursery.start_soon(side_reader, exited)

    with unwrap_lone_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            try:
                return await (start or run_process_group)(
                    argv, cwd=cwd, env=env, output_fd=write_fd, kill_grace=kill_grace, record=record, marker=marker
                )
            finally:
                exited.set()
                # Our copy of the write end would keep the pipe from ever reaching end of file.
                os.close(write_fd)
                readers.deadline = trio.current_time() + drain_seconds
