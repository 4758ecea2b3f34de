"""The one way a run's processes are ended: SIGTERM, a grace period, SIGKILL; then what is left of the run.

Cold and warm runs, and a warm parent itself, all end this way. Trio's own default signals
only the child, which would leave Ansible's workers behind: here a whole process group is
signalled, and what left the group is found by the run's marker.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable

import trio

from ansible_worker.run.process.launch import ExitRecord
from ansible_worker.run.process.stray_processes import kill_marked

log = logging.getLogger(__name__)

# After SIGKILL a process ends at once; the bound covers a report that never comes.
KILLED_REPORT_SECONDS = 10.0


def send_signal(pid: int, signum: signal.Signals, *, group: bool = True) -> None:
    """Signal the process group `pid` (or the process alone); one that is gone already is no error."""
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to signal %s %d", "process group" if group else "process", pid)


async def terminate(
    pid: int,
    *,
    kill_grace: float,
    ended: Callable[[], Awaitable[object]],
    group: bool = True,
    record: ExitRecord | None = None,
    also: Callable[[], None] | None = None,
) -> None:
    """SIGTERM to the process group `pid` (or the process alone), SIGKILL after `kill_grace` seconds.

    Input: `ended` returns once the process has ended (`trio.Process.wait`, or the report
    of a warm job's end). `also` is called after SIGTERM (a warm job's root is told to end
    the run's strays). `record`, if given, notes that the group was signalled.

    Output: returns when the process has ended, or `KILLED_REPORT_SECONDS` after SIGKILL.
    """
    if record is not None:
        record.signalled_group = True
    what = "process group" if group else "process"
    log.debug("sending SIGTERM to %s %d", what, pid)
    send_signal(pid, signal.SIGTERM, group=group)
    if also is not None:
        also()
    with trio.move_on_after(kill_grace):
        await ended()
        return
    log.warning("%s %d still alive after %.1fs; sending SIGKILL", what, pid, kill_grace)
    send_signal(pid, signal.SIGKILL, group=group)
    with trio.move_on_after(KILLED_REPORT_SECONDS):
        await ended()


def end_stragglers(pgid: int, record: ExitRecord, marker: tuple[str, str] | None) -> bool:
    """Once a run's leader is gone: if the run was ended, kill what is left of it; whether it was ended.

    A run was ended when its group was signalled (`terminate`), when a signal from elsewhere
    killed the leader, or when its end was never reported. Then every process still in its
    group and every process whose environment holds `marker` gets SIGKILL: Ansible's workers
    start sessions of their own, and a straggler must not outlive its run.
    """
    code = record.returncode
    if not (record.signalled_group or code is None or code < 0):
        return False
    send_signal(pgid, signal.SIGKILL)
    if marker is not None:
        kill_marked(*marker)
    return True
