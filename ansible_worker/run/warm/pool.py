"""Keep a few warm Ansible parents (one per configuration key) and start jobs as fresh forks of them.

A warm parent (`parent_script.py`, run under Ansible's own Python) has run the imports of
the `ansible-playbook` script; a job forked from it skips them. The pool is bounded and
least recently used parents give way; a parent is retired after `max_forks` forks, when
its memory grows past `max_rss_kib`, or when a file it read has changed, and replaced
when it dies (its running jobs then fail with a reason). Any doubt about a job's
configuration means a cold start instead, with the reason logged.

A job's own variables (its event FIFO, its credentials) never reach a parent: they are not
in its key, and the job's argv and environment go from the worker to the job's process
through a pipe of their own, once that process exists.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import ExitRecord, ProcessStarter, run_process_group
from ansible_worker.run.process.stray_processes import kill_marked
from ansible_worker.run.warm.key import ColdStart, Interpreter, find_interpreter, read_at_start, warm_key

log = logging.getLogger(__name__)

PARENT_SCRIPT = Path(__file__).with_name("parent_script.py")
# A fork answers within milliseconds; a parent silent this long is wedged.
FORK_REPLY_SECONDS = 15.0
# After SIGKILL of its group a job's root reports at once; the bound covers a lost parent.
KILLED_REPORT_SECONDS = 10.0
_SEND_BUFFER = 4 * 1024 * 1024
# A parent given end of file ends its jobs within five seconds, then exits.
PARENT_STOP_SECONDS = 8.0
# Seconds a configuration whose parent could not start is given cold starts before a retry.
START_FAILURE_BACKOFF = 60.0
PADDING_VARIABLE = "ANSIBLE_WORKER_PADDING"
_PADDING = " " * 16384


async def _stop_parent(sock: socket.socket, process: trio.Process) -> None:
    """End of file tells the parent to end its jobs and exit; SIGTERM, then SIGKILL, if it does not."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    process.terminate()
    with trio.move_on_after(PARENT_STOP_SECONDS):
        await process.wait()
    if process.returncode is None:
        log.warning("warm Ansible parent %d did not exit; killing it", process.pid)
        process.kill()


class WarmParentLostError(JobRefusedError):
    """The warm parent of a running job died; the message says so and becomes the job's error."""


@dataclass(eq=False)
class _Run:
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

    def __init__(self, key: str, interpreter: Interpreter, *, cwd: Path, env: Mapping[str, str]) -> None:
        self.key = key
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
        # A file it read has changed: it serves no more jobs.
        self.stale = False
        self._runs: dict[int, _Run] = {}
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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the helper and read what it says until it exits.

        Cancellation: closing the socket tells the helper to end its jobs and exit; Trio's
        default then sends it SIGTERM and, after five seconds, SIGKILL.
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
                self.stale = self.stale or bool(message.get("stale"))
                run.started.set()
                self._runs.pop(message["id"], None)
            elif "pid" in message:
                run.pid, run.root = int(message["pid"]), int(message["root"])
                run.started.set()
            elif "exit" in message:
                run.code = int(message["exit"])
                run.exited.set()
                self._runs.pop(message["id"], None)

    async def start_run(self, *, output_fd: int) -> _Run:
        """Ask for a fork, with /dev/null and `output_fd` as its streams; the run once the helper has its pid.

        The run's `job_fd` then takes the job itself (`send_job`): the parent never sees it.

        Cancellation: the wait for the answer is shielded and bounded, so a run that was
        forked is always known by its pid, and the caller's next wait (for its end) ends it.

        Errors: `ColdStart` when the helper refused before forking (nothing ran);
        `WarmParentLostError` when it died or fell silent with the request in hand.
        """
        if self._sock is None or self.ended.is_set():
            raise ColdStart("the warm parent is not running")
        if self.stale:
            raise ColdStart("the warm parent is being replaced")
        run_id = next(self._ids)
        run = _Run()
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
            self.lost_reason = self.lost_reason or f"the warm parent (pid {self.pid}) did not answer a fork request"
            self.close()
            raise WarmParentLostError(f"{self.lost_reason}; the run could not be started")
        return run


async def send_job(run: _Run, job: Mapping[str, Any]) -> None:
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


async def run_forked(
    parent: WarmParent,
    run: _Run,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    kill_grace: float,
    record: ExitRecord,
    marker: tuple[str, str] | None = None,
) -> int:
    """`run_process_group` for a job forked from `parent` (`start_run`): the same signals, exit codes and clean-up.

    The job's argv, environment and working directory go to its own process first.

    Cancellation: the job's group gets SIGTERM (and its root SIGUSR1, which makes it kill
    every stray of the run once the leader is gone), then SIGKILL after `kill_grace`
    seconds; the wait for the end is shielded and bounded, as for a cold run.

    Errors: `WarmParentLostError` if the parent died, in which case the job's processes
    have been killed.
    """
    assert run.pid is not None
    assert run.root is not None
    interpreter = parent.interpreter
    job = {
        "argv": list(argv),
        "env": dict(env),
        "cwd": str(cwd),
        "title": [*interpreter.title, *argv],
        "name": interpreter.name,
    }
    try:
        try:
            await send_job(run, job)
            await run.exited.wait()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await _terminate(run, kill_grace=kill_grace, record=record)
            raise
    finally:
        record.returncode = run.code
        lost = run.code is None
        if record.signalled_group or lost or (run.code is not None and run.code < 0):
            _signal(run.pid, signal.SIGKILL, group=True)
            if lost:
                _signal(run.root, signal.SIGUSR1, group=False)
            if marker is not None:
                kill_marked(*marker)
    if run.code is None:
        raise WarmParentLostError(f"{parent.lost_reason}; the run was ended")
    return run.code


async def _terminate(run: _Run, *, kill_grace: float, record: ExitRecord) -> None:
    assert run.pid is not None
    assert run.root is not None
    record.signalled_group = True
    _signal(run.pid, signal.SIGTERM, group=True)
    _signal(run.root, signal.SIGUSR1, group=False)
    with trio.move_on_after(kill_grace):
        await run.exited.wait()
    if not run.exited.is_set():
        log.warning("process group %d still alive after %.1fs; sending SIGKILL", run.pid, kill_grace)
        _signal(run.pid, signal.SIGKILL, group=True)
        with trio.move_on_after(KILLED_REPORT_SECONDS):
            await run.exited.wait()


def _signal(pid: int, signum: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to signal %s %d", "process group" if group else "process", pid)


class WarmPool:
    """Parents by key, least recently used first; `starter` picks or starts the one for a job."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        size: int,
        max_forks: int,
        max_rss_kib: int,
        start_timeout: float,
        late: Collection[str],
        metrics: WorkerMetrics,
    ) -> None:
        self._nursery = nursery
        self.size = size
        self.max_forks = max_forks
        self.max_rss_kib = max_rss_kib
        self.start_timeout = start_timeout
        self.late = frozenset(late)
        self.metrics = metrics
        self._parents: OrderedDict[str, WarmParent] = OrderedDict()
        self._retired: set[WarmParent] = set()
        # Keys whose parent died before it was ready: when, and why (bounded by `size`).
        self._failed: dict[str, tuple[float, str]] = {}

    @property
    def parents(self) -> int:
        """How many parents are alive (serving ones and retired ones still running jobs)."""
        return len(self._parents) + len(self._retired)

    def _publish_size(self) -> None:
        self.metrics.warm_pool_size = len(self._parents)

    def prepare(self, executable: str, *, cwd: Path, env: Mapping[str, str]) -> None:
        """Start a parent for the configuration most jobs will have, so the first job is warm too."""
        try:
            self._parent_for(executable, cwd=cwd, env=env, late=self.late)
        except ColdStart as exc:
            log.info("no warm Ansible parent prepared: %s", exc)

    def _parent_for(self, executable: str, *, cwd: Path, env: Mapping[str, str], late: Collection[str]) -> WarmParent:
        interpreter = find_interpreter(executable, env)
        key = warm_key(interpreter, cwd=cwd, env=env, late=late)
        parent = self._parents.get(key)
        if parent is not None and not parent.ended.is_set():
            self._parents.move_to_end(key)
            return parent
        if parent is not None:
            del self._parents[key]
        failed = self._failed.get(key)
        if failed is not None and trio.current_time() < failed[0] + START_FAILURE_BACKOFF:
            raise ColdStart(f"the warm parent for this configuration could not start: {failed[1]}")
        self._failed.pop(key, None)
        while len(self._parents) >= self.size:
            _, oldest = self._parents.popitem(last=False)
            self._retire(oldest)
        parent = WarmParent(key, interpreter, cwd=cwd, env={k: v for k, v in env.items() if k not in late})
        self._parents[key] = parent
        self.metrics.warm_parents_started += 1
        self._nursery.start_soon(self._own, parent)
        self._publish_size()
        return parent

    async def _own(self, parent: WarmParent) -> None:
        """The error boundary of one parent: whatever it raises ends it, never the pool."""
        try:
            await parent.run()
        except Exception as exc:
            log.exception("warm Ansible parent %s failed", parent.pid)
            parent.lost_reason = f"the warm Ansible parent failed: {type(exc).__name__}: {exc}"
        finally:
            self._retired.discard(parent)
            if self._parents.get(parent.key) is parent:
                del self._parents[parent.key]
                if parent.refusal is not None:
                    # Not lost: it looked at its configuration and said no.
                    self._remember_failure(parent.key, parent.lost_reason or parent.refusal)
                    log.info(
                        "%s; jobs with this configuration start cold (asked again after %gs)",
                        parent.lost_reason,
                        START_FAILURE_BACKOFF,
                    )
                elif not parent.retiring:
                    self.metrics.warm_parents_lost += 1
                    if not parent.ready.is_set():
                        # It never got as far as importing Ansible: do not retry it for every job.
                        self._remember_failure(parent.key, parent.lost_reason or "unknown")
                        log.warning(
                            "%s before it was ready; jobs with its configuration start cold for %gs",
                            parent.lost_reason,
                            START_FAILURE_BACKOFF,
                        )
                    else:
                        log.warning("%s; the next job with its configuration starts a new one", parent.lost_reason)
            self._publish_size()

    def _remember_failure(self, key: str, reason: str) -> None:
        self._failed[key] = (trio.current_time(), reason)
        while len(self._failed) > self.size:
            del self._failed[next(iter(self._failed))]

    def _retire(self, parent: WarmParent) -> None:
        parent.retiring = True
        if self._parents.get(parent.key) is parent:
            del self._parents[parent.key]
        if parent.active:
            self._retired.add(parent)
        else:
            parent.close()
        self._publish_size()

    async def starter(
        self, executable: str, *, cwd: Path, env: Mapping[str, str], late: Collection[str] = ()
    ) -> ProcessStarter | None:
        """How to start this job warm, or None (logged with the reason) for a cold start.

        `late` names the job's own variables (its credentials'): they go to the job's process
        only, so none of them may be one that Ansible reads when it starts.

        Cancellation: the wait for a new parent to be ready is bounded by `start_timeout`;
        cancelling it leaves the parent starting for later jobs.
        """
        own = frozenset(late) | self.late
        try:
            # Reads the script and the few ansible.cfg candidates: small local files, cheaper
            # than a thread hop.
            parent = self._parent_for(executable, cwd=cwd, env=env, late=own)
            with trio.move_on_after(self.start_timeout):
                await _first(parent.ready, parent.ended)
            if parent.ended.is_set():
                raise ColdStart(parent.lost_reason or "the warm parent exited")
            if not parent.ready.is_set():
                raise ColdStart(f"the warm parent was not ready within {self.start_timeout:g}s")
            early = sorted(name for name in own if name in env and read_at_start(name, parent.early))
            if early:
                raise ColdStart(
                    f"the job's own {', '.join(early)} may be read when Ansible starts: a warm parent would hold it"
                )
        except ColdStart as exc:
            self.metrics.cold_starts += 1
            log.info("cold start: %s", exc)
            return None
        return partial(self._run_in, parent)

    async def _run_in(
        self,
        parent: WarmParent,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        output_fd: int,
        kill_grace: float,
        record: ExitRecord,
        marker: tuple[str, str] | None = None,
    ) -> int:
        try:
            try:
                run = await parent.start_run(output_fd=output_fd)
            except ColdStart as exc:
                # Refused before anything ran (a file it read changed, say): this job starts cold.
                if parent.stale:
                    self._retire(parent)
                self.metrics.cold_starts += 1
                log.info("cold start: %s", exc)
                return await run_process_group(
                    argv, cwd=cwd, env=env, output_fd=output_fd, kill_grace=kill_grace, record=record, marker=marker
                )
            self.metrics.warm_starts += 1
            return await run_forked(
                parent, run, argv, cwd=cwd, env=env, kill_grace=kill_grace, record=record, marker=marker
            )
        finally:
            self._check_retirement(parent)

    def _check_retirement(self, parent: WarmParent) -> None:
        if parent.ended.is_set():
            return
        if not parent.retiring:
            rss = _rss_kib(parent.pid)
            if parent.forks >= self.max_forks or rss > self.max_rss_kib:
                log.info("retiring the warm Ansible parent %s after %d forks (%d KiB)", parent.pid, parent.forks, rss)
                self._retire(parent)
        elif parent.active == 0:
            self._retired.discard(parent)
            parent.close()

    def close(self) -> None:
        """End every parent (and with it any job still forked from one)."""
        for parent in [*self._parents.values(), *self._retired]:
            parent.retiring = True
            parent.close()


async def _first(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


def _rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@asynccontextmanager
async def open_warm_pool(
    *,
    size: int,
    max_forks: int,
    max_rss_kib: int,
    start_timeout: float,
    late: Collection[str],
    metrics: WorkerMetrics,
) -> AsyncIterator[WarmPool]:
    """A pool whose parents live in a nursery of their own and end when the block ends.

    Cancellation: leaving the block (also by cancellation) ends every parent, and each
    parent ends the jobs still forked from it.
    """
    async with trio.open_nursery() as nursery:
        pool = WarmPool(
            nursery,
            size=size,
            max_forks=max_forks,
            max_rss_kib=max_rss_kib,
            start_timeout=start_timeout,
            late=late,
            metrics=metrics,
        )
        try:
            yield pool
        finally:
            pool.close()
