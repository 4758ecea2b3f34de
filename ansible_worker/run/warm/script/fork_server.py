"""The warm parent's request loop: one fork per request, each job's end reported, every job ended at SIGTERM.

Part of the warm parent (`warm_parent.py`), loaded by it once the script's imports are done:
the standard library only. The protocol is described in `warm_parent.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ansible_worker.run.warm.script.imported import Imported
    from ansible_worker.run.warm.script.job_process import Job

    JobRoot = Callable[[list[int], int, Imported], Job]

_MAX_PACKET = 65536
# Plain numbers: an operation on socket's flag enum would leave a member in its cache, which a cold start has not.
_TRUNCATED = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)
# How long a parent told to stop waits for its jobs' roots once it has killed their groups.
_END_JOBS_SECONDS = 5.0


def _rss_kib() -> int:
    # Bytes, not text: a codec looked up here would be one a cold start loads later.
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    # The worker may be gone; end of file on the socket ends us next.
    with contextlib.suppress(OSError):
        sock.send(json.dumps(message).encode())


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class Parent:
    """The request loop: fork on `run`, report each job's end, end everything on end of file."""

    def __init__(self, sock: socket.socket, imported: Imported, *, job_root: JobRoot) -> None:
        self.sock = sock
        self.imported = imported
        # What a fork becomes (`job_process.job_root`): returns only in the job's process.
        self.job_root = job_root
        # root pid -> (job id, leader pid)
        self.jobs: dict[int, tuple[int, int]] = {}
        self.stopping = False
        self.own_fds: list[int] = []
        self.selector: selectors.BaseSelector | None = None

    def serve(self) -> Job | None:
        """Serve until end of file (None); in a job's process `G`, return its job instead."""
        wake_read, wake_write = os.pipe()
        self.own_fds = [wake_read, wake_write]
        os.set_blocking(wake_write, False)
        os.set_blocking(wake_read, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        selector = selectors.DefaultSelector()
        self.selector = selector
        selector.register(self.sock, selectors.EVENT_READ, "sock")
        selector.register(wake_read, selectors.EVENT_READ, "wake")
        ready = {"ready": True, "pid": os.getpid(), "rss": _rss_kib(), "early": sorted(self.imported.early)}
        send(self.sock, {**ready, "config": self.imported.config_file})
        while not self.stopping:
            for key, _ in selector.select():
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 4096)
                    self._reap()
                    continue
                answer = self._take_request()
                if not isinstance(answer, bool):
                    # In a job's process: its job.
                    return answer
                if not answer:
                    # The worker is gone (perhaps killed): its jobs live on, as cold ones
                    # would, until the restarted worker ends them by their marker.
                    return None
        self._end_all()
        return None

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _take_request(self) -> bool | Job:
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(_MAX_PACKET, socket.CMSG_SPACE(4 * 4))
        except InterruptedError:
            return True
        except OSError:
            return False
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4))
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        job_id = None
        try:
            request = json.loads(data)
            job_id = request["id"]
            if flags & _TRUNCATED:
                raise ValueError("request truncated")
            if request.get("op") != "run" or len(fds) != 4:
                raise ValueError("not a run request with four descriptors")
            if not self.imported.streams_match(fds):
                raise ValueError("the job's standard streams are not of the kind the warm parent started with")
            stale = self.imported.changed()
            if stale is not None:
                send(self.sock, {"id": job_id, "error": stale, "stale": True})
                return True
            return self._fork(int(job_id), fds)
        except Exception as exc:
            send(self.sock, {"id": job_id, "error": f"{type(exc).__name__}: {exc}"})
            return True
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _fork(self, job_id: int, fds: list[int]) -> bool | Job:
        report_read, report_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        root = os.fork()
        if root == 0:
            os.close(report_read)
            job = self._in_root(fds, report_write)
            # In `G`, whose descriptors are its job's now: none of these is left to close.
            fds.clear()
            return job
        os.close(report_write)
        # Closed before the answer: once the worker writes the job, only `G` holds its pipe.
        for fd in fds:
            os.close(fd)
        fds.clear()
        with os.fdopen(report_read, "rb") as report:
            text = report.read()
        # A root that died before forking is reported when it is reaped.
        leader = int(text) if text else root
        self.jobs[root] = (job_id, leader)
        send(self.sock, {"id": job_id, "pid": leader, "root": root})
        return True

    def _in_root(self, fds: list[int], report_fd: int) -> Job:
        """In `C`: drop what is the parent's, then be the job's root; returns only in `G`."""
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            self.sock.close()
            # Nothing of the parent's own stays open in a job.
            if self.selector is not None:
                self.selector.close()
            for fd in self.own_fds:
                os.close(fd)
        except BaseException:
            os._exit(1)
        return self.job_root(fds, report_fd, self.imported)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.jobs.pop(pid, None)
            if job is not None:
                send(self.sock, {"id": job[0], "exit": os.waitstatus_to_exitcode(status)})

    def _end_all(self) -> None:
        """End every job (its group and its strays), and wait for their roots, bounded."""
        for root, (_, leader) in self.jobs.items():
            _kill_group(leader, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(root, signal.SIGUSR1)
        deadline = time.monotonic() + _END_JOBS_SECONDS
        while self.jobs and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        for root in list(self.jobs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(root, signal.SIGKILL)
