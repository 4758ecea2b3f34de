"""Find and kill the processes of one run that left its process group, by a variable in their environment.

Ansible's worker processes call `setsid()`, so the processes of a run are spread over
several sessions, and ending the run's process group does not reach all of them: Ansible
forwards SIGTERM to the workers it knows of, but a worker forked at that very moment, or
a command that starts a session of its own, escapes. Every process of a run inherits the
run's own environment variable (the event FIFO's path, unique per run), which is how they
are found here.

The scan reads `/proc` synchronously: it is only done when a run has been cancelled or
killed, and reads a few small in-memory files per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import trio

log = logging.getLogger(__name__)

_ROUNDS = 10


def kill_marked(variable: str, value: str, *, proc: Path = Path("/proc")) -> int:
    """SIGKILL every process whose environment has `variable=value`; how many there were.

    Repeats until a scan finds none (at most ten scans), since a process may fork in the
    instant before its signal lands.
    """
    marker = f"{variable}={value}".encode()
    own = os.getpid()
    killed = 0
    for _ in range(_ROUNDS):
        found = [pid for pid in _marked(marker, proc) if pid != own]
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed += 1
    if killed:
        log.warning("killed %d process(es) of a stopped run that had left its process group", killed)
    return killed


def _marked(marker: bytes, proc: Path) -> list[int]:
    return [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit() and _is_marked(entry, marker)]


def _is_marked(entry: Path, marker: bytes) -> bool:
    try:
        environment = (entry / "environ").read_bytes()
    except OSError:
        return False  # gone already, or another user's
    return marker in environment.split(b"\0") and not _is_zombie(entry)


def _signal_if_marked(pid: int, marker: bytes, proc: Path) -> None:
    # Without a pidfd a reused pid cannot be ruled out entirely; checking first narrows it.
    if _is_marked(proc / str(pid), marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _is_zombie(entry: Path) -> bool:
    try:
        # The state is the first field after the command name, which ends with ")".
        return (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


async def end_marked(variable: str, value: str, *, kill_grace: float, proc: Path = Path("/proc")) -> int:
    """End every process whose environment has `variable=value`: SIGTERM, then SIGKILL after `kill_grace`.

    For the processes of a run that a previous worker process left behind (it was killed
    alone, its children were not): they are no children of ours, so their ends are waited
    for through pidfds. Returns how many there were.

    Cancellation: the grace period is cut short and the pidfds are closed; the processes
    have had SIGTERM, but the survivors are not killed. Safe to retry: a second call finds
    and ends whoever is still marked.
    """
    marker = f"{variable}={value}".encode()
    own = os.getpid()
    pids = [pid for pid in _marked(marker, proc) if pid != own]
    if not pids:
        return 0
    log.warning("ending %d process(es) of a run that a previous worker process left behind", len(pids))
    handles: list[int] = []
    unwatched = False
    try:
        for pid in pids:
            try:
                handle = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:
                # No pidfds (a kernel before 5.3, an old seccomp profile): grace by the clock.
                unwatched = True
                _signal_if_marked(pid, marker, proc)
                continue
            # The pidfd pins the process: checked again now, its pid cannot be another's.
            if not _is_marked(proc / str(pid), marker):
                os.close(handle)  # ended, and its pid reused: nothing of ours to wait for
                continue
            handles.append(handle)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(handle, signal.SIGTERM)
        with trio.move_on_after(kill_grace):
            for handle in handles:
                await trio.lowlevel.wait_readable(handle)
            if unwatched:
                await trio.sleep(kill_grace)  # nothing to wait on; the SIGKILL pass rescans
    finally:
        for handle in handles:
            os.close(handle)
    kill_marked(variable, value, proc=proc)
    return len(pids)
