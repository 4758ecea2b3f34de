"""Run a command in a session of its own, keep its output, and end its whole process group when cancelled."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.run.process.launch import ExitRecord, Launch, ProcessStarter
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.termination import end_stragglers, terminate


async def run_process_group(launch: Launch, record: ExitRecord) -> int:
    """Run `launch.argv` (never through a shell) with stdout and stderr on `launch.output_fd`.

    Input: standard input is /dev/null, so nothing can wait for a person.

    Output: the exit code (negative for a signal, as in `subprocess`). `record` holds it
    too, which is how a caller learns the code of a run it cancelled.

    Cancellation: the process is the leader of a new session, so Ansible's forks and
    anything they start share its process group. On cancel the group is ended by
    `terminate` (SIGTERM, then SIGKILL after `launch.kill_grace`); the wait for the leader
    is shielded, so no exception leaves while it lives. Then `end_stragglers` kills what
    outlived the leader, in its group or carrying `launch.marker`. The same holds when the
    leader was killed by a signal from elsewhere.

    Errors: `OSError` when the executable cannot be started.
    """
    process: trio.Process | None = None

    async def deliver_cancel(started: trio.Process) -> None:
        nonlocal process
        # A cancellation that arrives as the process starts may leave `nursery.start` before it
        # returns the process (the process is then ended all the same): know it from here.
        process = started
        await terminate(started.pid, kill_grace=launch.kill_grace, ended=started.wait, record=record)

    try:
        with unwrap_lone_errors():
            async with trio.open_nursery() as nursery:
                process = await nursery.start(
                    partial(
                        trio.run_process,
                        list(launch.argv),
                        cwd=launch.cwd,
                        env=dict(launch.env),
                        stdin=subprocess.DEVNULL,
                        stdout=launch.output_fd,
                        stderr=launch.output_fd,
                        start_new_session=True,
                        check=False,
                        deliver_cancel=deliver_cancel,
                    )
                )
    finally:
        if process is not None:
            record.returncode = process.returncode
            end_stragglers(process.pid, record, launch.marker)
    assert record.returncode is not None
    return record.returncode


async def run_with_output(
    launch: Launch,
    *,
    tail: OutputTail,
    record: ExitRecord,
    side_reader: Callable[[trio.Event], Awaitable[None]] | None = None,
    drain_seconds: float = 5.0,
    start: ProcessStarter = run_process_group,
) -> int:
    """Run `launch` with `start` (a cold start by default), its stdout and stderr kept in `tail`,
    and an optional second reader (the event FIFO) run alongside; readers get an event set
    when the process exits.

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
                return await start(launch.writing_to(write_fd), record)
            finally:
                exited.set()
                # Our copy of the write end would keep the pipe from ever reaching end of file.
                os.close(write_fd)
                readers.deadline = trio.current_time() + drain_seconds
