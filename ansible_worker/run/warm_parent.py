"""A warm Ansible parent: import the playbook CLI once, then fork one fresh child per job on request.

This file runs as a script of its own under the Python of `ansible-playbook` (which need
not be the worker's), so it uses only the standard library and Ansible, and nothing of
the worker's package. It is single-threaded: forking a process with threads (the worker's
Trio runtime) is unsafe, which is why the worker does not fork itself.

Protocol, on the SOCK_SEQPACKET socket whose descriptor is the first argument; each
packet is one JSON object:

- parent -> worker, once imported: `{"ready": true, "pid": N, "rss": KIB}`
- worker -> parent: `{"op": "run", "id": I, "argv": [...], "env": {...}, "cwd": "..."}`
  with three descriptors (stdin, stdout, stderr) attached (SCM_RIGHTS)
- parent -> worker: `{"id": I, "pid": G, "root": C}` (or `{"id": I, "error": "..."}`),
  then, when the job has ended, `{"id": I, "exit": CODE}` (negative for a signal)

Each job is two processes. The root `C` is a child subreaper that forks `G`, the process
that becomes `ansible-playbook`: `G` starts its own session, so the worker ends the job by
signalling the process group `G`. Ansible's own workers start sessions of their own; when
their parent dies they are reparented to `C`, which kills all of them if the run was ended
(SIGUSR1 from the worker, or `G` died by a signal), and then exits with `G`'s exact status.

End of file on the socket (the worker exited, perhaps by a crash) ends the parent but not
its jobs, as a crash leaves a cold `ansible-playbook` running: the restarted worker ends them
by the marker in their environment. SIGTERM ends the parent and every job of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import selectors
import signal
import socket
import sys
import time
from typing import Any

_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_MAX_PACKET = 4 * 1024 * 1024
_END_GRACE = 5.0

# Modules a playbook run loads anyway; importing them here is what makes a start warm.
_PRELOAD = (
    "ansible.cli.playbook",
    "ansible.executor.playbook_executor",
    "ansible.executor.task_queue_manager",
    "ansible.executor.task_executor",
    "ansible.executor.process.worker",
    "ansible.executor.module_common",
    "ansible.inventory.manager",
    "ansible.vars.manager",
    "ansible.playbook.play",
    "ansible.plugins.strategy.linear",
    "ansible.plugins.callback.default",
    "ansible.plugins.connection.local",
    "ansible.plugins.action.normal",
    "ansible.template",
)


def _rss_kib() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    # The worker may be gone; end of file on the socket ends us next.
    with contextlib.suppress(OSError):
        sock.send(json.dumps(message).encode())


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _rewrite_area(start: int, end: int, strings: list[str]) -> None:
    """Write NUL-separated `strings` over our own initial argv or environment block, NUL-padded.

    What `ps` and /proc show of a process is read from these blocks; Python copied them at
    start-up and holds no pointer into them, so they are free to overwrite.
    """
    room = end - start
    if room <= 0:
        return
    data = b"".join(text.encode(errors="surrogateescape") + b"\0" for text in strings)[: room - 1]
    ctypes.memmove(start, data.ljust(room, b"\0"), room)


def _retitle(argv: list[str], env: dict[str, str]) -> None:
    """Make this process show the job's command line and environment, as a cold start would.

    Operators (and the worker's clean-up, which finds a run's processes by a variable in
    their environment) see the command and variables of the job, and Ansible's own forks
    inherit them. The parent was started with padding so that both fit.
    """
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        arg_start, arg_end, env_start, env_end = (int(value) for value in fields[45:49])
        _rewrite_area(arg_start, arg_end, argv)
        _rewrite_area(env_start, env_end, [f"{name}={value}" for name, value in env.items()])
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, os.path.basename(argv[0]).encode()[:15], 0, 0, 0)
    except (OSError, ValueError, IndexError, AttributeError):
        pass  # only what ps shows; the run is the same


def _run_playbook(argv: list[str], env: dict[str, str], cwd: str, fds: list[int]) -> None:
    """In `G`: become `ansible-playbook` with the job's argv, environment, cwd and streams; never returns."""
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        # The job's own variable (the event FIFO, unique per run) first: it must survive a cut.
        late = {name: value for name, value in env.items() if name.startswith("ANSIBLE_WORKER_")}
        _retitle(argv, {**late, **env})
        import atexit

        # Only what this run registers runs at its exit, as in a process of its own.
        atexit._clear()
        import ansible.constants as C  # noqa: N812

        # Ansible made its local temporary directory at import; each run gets its own, as a cold one does.
        # Resolved as `ansible.constants` resolves it, with the constants as template variables
        # (its default is '{{ ANSIBLE_HOME ~ "/tmp" }}').
        C.DEFAULT_LOCAL_TMP = C.config.get_config_value("DEFAULT_LOCAL_TMP", variables=vars(C))
        from ansible.cli.playbook import main

        # Exactly what the ansible-playbook script does.
        sys.argv = list(argv)
        sys.argv[0] = re.sub(r"(-script\.pyw|\.exe)?$", "", sys.argv[0])
        try:
            result = main()
            code = 0 if result is None else int(result)
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        atexit._run_exitfuncs()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            print(f"[ERROR]: warm start failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def _job_root(argv: list[str], env: dict[str, str], cwd: str, fds: list[int], report_fd: int) -> None:
    """In `C`: fork `G`, reap what is reparented to us, and end with `G`'s status; never returns."""
    ended = False

    def on_end(signum: int, frame: object) -> None:
        nonlocal ended
        ended = True

    try:
        # The parent's stderr is a pipe the worker reads until it closes: a job must not hold it.
        quiet = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(quiet, target)
        os.close(quiet)
        signal.signal(signal.SIGUSR1, on_end)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # without it a stray may be reparented to init, as with a cold start
        leader = os.fork()
        if leader == 0:
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            # As in any Python program: Ctrl-C is KeyboardInterrupt, which Ansible handles.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.close(report_fd)
            _run_playbook(argv, env, cwd, fds)
        for fd in fds:
            os.close(fd)
        os.write(report_fd, str(leader).encode())
        os.close(report_fd)
        status = 0
        while True:
            try:
                pid, wait_status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == leader:
                status = wait_status
                break
        signalled = os.WIFSIGNALED(status)
        if signalled or ended:
            _kill_descendants()
        if signalled:
            signum = os.WTERMSIG(status)
            # SIGKILL and SIGSTOP have no handler to reset.
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        os._exit(os.WEXITSTATUS(status))
    finally:
        os._exit(1)


def _kill_descendants() -> None:
    """SIGKILL every process reparented to this subreaper, until none is left (bounded)."""
    me = os.getpid()
    deadline = time.monotonic() + _END_GRACE
    while time.monotonic() < deadline:
        children = _children_of(me)
        if not children:
            break
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Reap what died; their own children are ours now, for the next round.
        time.sleep(0.01)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


class _Parent:
    """The request loop: fork on `run`, report each job's end, end everything on end of file."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # root pid -> (job id, leader pid)
        self.jobs: dict[int, tuple[int, int]] = {}
        self.stopping = False
        self.own_fds: list[int] = []
        self.selector: selectors.BaseSelector | None = None

    def serve(self) -> None:
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
        _send(self.sock, {"ready": True, "pid": os.getpid(), "rss": _rss_kib()})
        while not self.stopping:
            for key, _ in selector.select():
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 4096)
                    self._reap()
                elif not self._take_request():
                    # The worker is gone (perhaps killed): its jobs live on, as cold ones
                    # would, until the restarted worker ends them by their marker.
                    return
        self._end_all()

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _take_request(self) -> bool:
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(_MAX_PACKET, socket.CMSG_SPACE(3 * 4))
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
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ValueError("request truncated")
            if request.get("op") != "run" or len(fds) != 3:
                raise ValueError("not a run request with three descriptors")
            argv = [str(arg) for arg in request["argv"]]
            env = {str(k): str(v) for k, v in request["env"].items()}
            cwd = str(request["cwd"])
            self._fork(int(job_id), argv, env, cwd, fds)
        except Exception as exc:
            _send(self.sock, {"id": job_id, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return True

    def _fork(self, job_id: int, argv: list[str], env: dict[str, str], cwd: str, fds: list[int]) -> None:
        report_read, report_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        root = os.fork()
        if root == 0:
            try:
                os.close(report_read)
                signal.set_wakeup_fd(-1)
                for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                self.sock.close()
                # Nothing of the parent's own stays open in a job.
                if self.selector is not None:
                    self.selector.close()
                for fd in self.own_fds:
                    os.close(fd)
            finally:
                _job_root(argv, env, cwd, fds, report_write)
        os.close(report_write)
        with os.fdopen(report_read, "rb") as report:
            text = report.read()
        if not text:
            # The root died before forking; its exit is reported when it is reaped.
            self.jobs[root] = (job_id, root)
            _send(self.sock, {"id": job_id, "pid": root, "root": root})
            return
        leader = int(text)
        self.jobs[root] = (job_id, leader)
        _send(self.sock, {"id": job_id, "pid": leader, "root": root})

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
                _send(self.sock, {"id": job[0], "exit": _exit_code(status)})

    def _end_all(self) -> None:
        """End every job (its group and its strays), and wait for their roots, bounded."""
        for root, (_, leader) in self.jobs.items():
            _kill_group(leader, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(root, signal.SIGUSR1)
        deadline = time.monotonic() + _END_GRACE
        while self.jobs and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        for root in list(self.jobs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(root, signal.SIGKILL)


def main() -> int:
    """Import Ansible's playbook CLI as its script would, then serve fork requests until told to stop."""
    sock_fd = int(sys.argv[1])
    script = sys.argv[2]
    # As when the script runs: its own directory first on the path, not this file's.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    sys.argv = [script]
    for name in _PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: S112 - a module missing here is imported by the run itself
            continue
    sock = socket.socket(fileno=sock_fd)
    try:
        _Parent(sock).serve()
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
