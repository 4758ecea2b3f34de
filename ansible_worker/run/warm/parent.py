"""The handle on one warm Ansible parent (`script/warm_parent.py`): its process, its socket, the runs forked from it.

The protocol it speaks is described in `script/warm_parent.py`. `run` owns the parent's process
for as long as it lives; `start_run` asks it for one fork.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.termination import terminate
from ansible_worker.run.warm.key import ColdStart, Interpreter, WarmKey, changed_since, read_elsewhere

log = logging.getLogger(__name__)

PARENT_SCRIPT = Path(__file__).parent / "script" / "warm_parent.py"
# A fork answers within milliseconds; a parent silent this long is wedged.
FORK_REPLY_SECONDS = 15.0
_SEND_BUFFER = 4 * 1024 * 1024
# A parent given end of file ends its jobs within five seconds, then exits.
PARENT_STOP_SECONDS = 8.0
PADDING_VARIABLE = "ANSIBLE_WORKER_PADDING"
_PADDING = " " * 16384


async def _stop_parent(sock: socket.socket, process: trio.Process) -> None:
    """End of file tells the parent to end its jobs and exit; SIGTERM, then SIGKILL, if it does not."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    # The parent alone: its jobs' roots share its process group, and it ends them itself.
    await terminate(process.pid, group=False, kill_grace=PARENT_STOP_SECONDS, ended=process.wait)


class WarmParentLostError(JobRefusedError):
    """The warm parent of a running job died; the message says so and becomes the job's error."""


@dataclass(eq=False)
class Run:
    """One job forked from a parent: what the parent has said about it so far."""

    started: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    pid: int | None = None
    root: int | None = None
    error: str | None = None
    code: int | None = None
    # The write end of the pipe the job's own process reads its job from.
    job_fd: int | None = None


class WarmParent:
    """One helper process and the socket to it; `run` is its owner task."""

    def __init__(self, key: WarmKey, interpreter: Interpreter, *, cwd: Path, env: Mapping[str, str]) -> None:
        self.key = key.digest
        self.configuration = key
        self.interpreter = interpreter
        self.cwd = cwd
        self.env = dict(env)
        self.ready = trio.Event()
        self.ended = trio.Event()
        self.pid: int | None = None
        self.rss_kib = 0
        self.forks = 0
        self.retiring = False
        self.lost_reason: str | None = None
        # What it said once imported: the variables read while Ansible was imported (and
        # those its configuration reads), or why it cannot serve this configuration.
        self.early: frozenset[str] = frozenset()
        self.refusal: str | None = None
        # A file it read has changed (why, then): it serves no more jobs.
        self.stale = False
        self.stale_reason = ""
        self._process: trio.Process | None = None
        self._runs: dict[int, Run] = {}
        self._ids = itertools.count(1)
        self._sock: trio.socket.SocketType | None = None
        self._scope = trio.CancelScope()
        # Its last words (an import error, a traceback), for the reason a job gets.
        self._errors = OutputTail(16384)

    @property
    def active(self) -> int:
        return len(self._runs)

    def close(self) -> None:
        """End the helper (its jobs too): used when retired and idle, and when the pool closes."""
        self._scope.cancel()

    def abandon(self, reason: str) -> None:
        """Kill the helper at once and end it: it is wedged, and would not end its jobs either."""
        self.lost_reason = self.lost_reason or reason
        if self._process is not None and self._process.returncode is None:
            # Also releases at once the descriptors of requests it holds unread (a job's output pipe).
            self._process.kill()
        self.close()

    def _mark_stale(self, reason: str) -> None:
        self.stale_reason = self.stale_reason or reason
        self.stale = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the helper and read what it says until it exits.

        Cancellation: closing the socket tells the helper to end its jobs and exit; it then
        gets SIGTERM and, after `PARENT_STOP_SECONDS`, SIGKILL.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        # Room for a job's command line and environment, which its process shows in their place.
        argv = [*self.interpreter.command, str(PARENT_SCRIPT), str(theirs.fileno()), self.interpreter.script, _PADDING]
        env = {**self.env, PADDING_VARIABLE: _PADDING}
        task_status.started()
        code: int | None = None
        try:
            with self._scope, unwrap_lone_errors():
                async with trio.open_nursery() as nursery:
                    try:
                        process = await nursery.start(
                            partial(
                                trio.run_process,
                                argv,
                                cwd=self.cwd,
                                env=env,
                                stdin=subprocess.DEVNULL,
                                # One pipe for both, as a job has: what Ansible learns of its
                                # streams when it is imported is what it would learn in a job.
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                pass_fds=(theirs.fileno(),),
                                start_new_session=True,
                                check=False,
                                deliver_cancel=partial(_stop_parent, ours),
                            )
                        )
                    finally:
                        theirs.close()
                    self.pid = process.pid
                    self._process = process
                    assert process.stdout is not None
                    nursery.start_soon(partial(self._errors.drain, process.stdout, exited=self.ended))
                    self._sock = trio.socket.from_stdlib_socket(ours)
                    await self._read(self._sock)
                    code = await process.wait()
        except OSError as exc:
            self.lost_reason = f"cannot start {argv[0]}: {exc.strerror or exc}"
        finally:
            ours.close()
            if self.refusal is not None:
                self.lost_reason = f"the warm parent cannot serve this configuration: {self.refusal}"
            elif self.lost_reason is None:
                last = self._errors.last_lines(1)
                self.lost_reason = (
                    f"the warm Ansible parent (pid {self.pid}) exited"
                    + (f" with code {code}" if code is not None else "")
                    + (f" ({last[0][:300]})" if last else "")
                )
            self.ended.set()
            for run in self._runs.values():
                run.started.set()
                run.exited.set()

    async def _read(self, sock: trio.socket.SocketType) -> None:
        while data := await sock.recv(65536):
            try:
                message: dict[str, Any] = json.loads(data)
            except ValueError:
                log.warning("warm parent %s sent an unreadable message", self.pid)
                continue
            if message.get("ready"):
                self.rss_kib = int(message.get("rss", 0))
                self.early = frozenset(str(name) for name in message.get("early", ()))
                read = message.get("config")
                elsewhere = read_elsewhere(self.configuration, read if isinstance(read, str) else None)
                if elsewhere is not None:
                    # So it would for every job with this key: as if it had refused.
                    self.refusal = elsewhere
                    self.close()
                    continue
                # A few small files, checked once per parent.
                changed = changed_since(self.configuration, self.cwd)
                if changed is not None:
                    self._mark_stale(changed)
                self.ready.set()
                continue
            if "cold" in message:
                self.refusal = str(message["cold"])
                continue
            run = self._runs.get(message.get("id", -1))
            if run is None:
                continue
            if "error" in message:
                run.error = str(message["error"])
                if message.get("stale"):
                    self._mark_stale(run.error)
                run.started.set()
                self._runs.pop(message["id"], None)
            elif "pid" in message:
                run.pid, run.root = int(message["pid"]), int(message["root"])
                run.started.set()
            elif "exit" in message:
                run.code = int(message["exit"])
                run.exited.set()
                self._runs.pop(message["id"], None)

    async def start_run(self, *, output_fd: int) -> Run:
        """Ask for a fork, with /dev/null and `output_fd` as its streams; the run once the helper has its pid.

        The run's `job_fd` then takes the job itself (`send_job`): the parent never sees it.

        Cancellation: the wait for the answer is shielded and bounded, so a run that was
        forked is always known by its pid, and the caller's next wait (for its end) ends it.

        Errors: `ColdStart` when nothing of the job ran: the helper refused before forking,
        or died or fell silent with the request in hand (a fork it made then finds the job's
        pipe closed unwritten, and ends saying nothing). A silent helper is killed.
        """
        if self._sock is None or self.ended.is_set():
            raise ColdStart("the warm parent is not running")
        if self.stale:
            raise ColdStart(f"the warm parent is being replaced: {self.stale_reason}")
        run_id = next(self._ids)
        run = Run()
        self._runs[run_id] = run
        job_read, run.job_fd = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            fds = array.array("i", [devnull, output_fd, output_fd, job_read])
            payload = json.dumps({"op": "run", "id": run_id}).encode()
            try:
                await self._sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            except OSError as exc:
                self._runs.pop(run_id, None)
                raise ColdStart(f"cannot send the job to the warm parent: {exc.strerror or exc}") from exc
        except BaseException:
            os.close(run.job_fd)
            run.job_fd = None
            raise
        finally:
            os.close(devnull)
            os.close(job_read)
        self.forks += 1
        # Shielded: once sent, the fork happens, and only its pid lets a cancelled job end it.
        with trio.CancelScope(shield=True), trio.move_on_after(FORK_REPLY_SECONDS):
            await run.started.wait()
        if run.pid is None:
            os.close(run.job_fd)
            run.job_fd = None
        if run.error is not None:
            raise ColdStart(f"the warm parent refused the job: {run.error}")
        if run.pid is None:
            # A later answer is about a fork that finds no job.
            self._runs.pop(run_id, None)
            if not self.ended.is_set():
                self.abandon(
                    f"the warm parent (pid {self.pid}) did not answer a fork request within {FORK_REPLY_SECONDS:g}s"
                )
            raise ColdStart(f"{self.lost_reason}; nothing of the job had run")
        return run
