"""A job forked from a warm parent, run to its end as a cold one is: the same signals, exit codes and clean-up."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Mapping
from typing import Any

import trio

from ansible_worker.run.process.launch import ExitRecord, Launch
from ansible_worker.run.process.termination import end_stragglers, send_signal, terminate
from ansible_worker.run.warm.parent import Run, WarmParent, WarmParentLostError


async def send_job(run: Run, job: Mapping[str, Any]) -> None:
    """Write `job` (argv, environment, working directory, title) to the run's own process, and close the pipe.

    Cancellation: the pipe is closed; the process reads an incomplete job and exits 1.
    """
    assert run.job_fd is not None
    stream = trio.lowlevel.FdStream(run.job_fd)
    run.job_fd = None
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            # Gone already: its exit says how.
            await stream.send_all(json.dumps(job).encode())


async def run_forked(parent: WarmParent, run: Run, launch: Launch, record: ExitRecord) -> int:
    """`run_process_group` for a job forked from `parent` (`WarmParent.start_run`).

    The job's argv, environment and working directory go to its own process first.

    Cancellation: `terminate` ends the job's group (SIGTERM, and SIGUSR1 to its root, which
    then kills every stray of the run once the leader is gone; SIGKILL after `kill_grace`),
    waiting for the parent's report of its end, shielded and bounded, as for a cold run.

    Errors: `WarmParentLostError` if the parent died, in which case the job's processes
    have been killed.
    """
    assert run.pid is not None
    assert run.root is not None
    root = run.root
    interpreter = parent.interpreter
    job = {
        "argv": list(launch.argv),
        "env": dict(launch.env),
        "cwd": str(launch.cwd),
        "title": [*interpreter.title, *launch.argv],
        "name": interpreter.name,
    }
    try:
        try:
            await send_job(run, job)
            await run.exited.wait()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await terminate(
                    run.pid,
                    kill_grace=launch.kill_grace,
                    ended=run.exited.wait,
                    record=record,
                    also=lambda: send_signal(root, signal.SIGUSR1, group=False),
                )
            raise
    finally:
        record.returncode = run.code
        if run.code is None:
            # Its parent is gone, and with it the report of its end: its root ends the strays.
            send_signal(root, signal.SIGUSR1, group=False)
        end_stragglers(run.pid, record, launch.marker)
    if run.code is None:
        raise WarmParentLostError(f"{parent.lost_reason}; the run was ended")
    return run.code
