"""One job of the warm parent: its root `C`, a subreaper, and its process `G`, made what a cold start is.

Part of the warm parent (`warm_parent.py`), loaded by it once the script's imports are done:
the standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.machinery
import json
import os
import secrets
import signal
import sys
import time
import types
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from ansible_worker.run.warm.script.imported import Imported

_PR_SET_DUMPABLE = 4
_PR_SET_NAME = 15
# The bit `uuid` sets in a node it drew at random (no hardware address has it).
_MULTICAST_NODE = 1 << 40
_PR_SET_CHILD_SUBREAPER = 36
_MAX_JOB_BYTES = 16 * 1024 * 1024
# How long a root keeps killing the strays of a run that was ended.
_KILL_STRAYS_SECONDS = 5.0


class Job:
    """What the worker sent `G`: the job's argv, environment and working directory, and how it shows in `ps`."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.argv = [str(arg) for arg in message["argv"]]
        self.env = {str(name): str(value) for name, value in message["env"].items()}
        self.cwd = str(message["cwd"])
        self.title = [str(arg) for arg in message["title"]]
        self.name = str(message["name"])


def job_root(fds: list[int], report_fd: int, imported: Imported) -> Job:
    """In `C`: fork `G`, which returns its job; `C` itself reaps what is reparented to it and never returns."""
    ended: list[bool] = []
    try:
        # The parent's stderr is a pipe the worker reads until it closes: a job must not hold it.
        quiet = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(quiet, target)
        os.close(quiet)
        signal.signal(signal.SIGUSR1, lambda signum, frame: ended.append(True))
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # without it a stray may be reparented to init, as with a cold start
        leader = os.fork()
    except BaseException:
        os._exit(1)
    if leader == 0:
        os.close(report_fd)
        return _become_job(fds, imported)
    _reap_as_root(leader, fds, report_fd, ended)


def _reap_as_root(leader: int, fds: list[int], report_fd: int, ended: list[bool]) -> NoReturn:
    """In `C`: report `G`, wait for it, end the run's strays if it was ended, exit with `G`'s status."""
    try:
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
            # Without a core file of its own: `G` left the run's, as a cold start leaves one.
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
            os.kill(os.getpid(), signum)
        os._exit(os.WEXITSTATUS(status))
    finally:
        os._exit(1)


def _kill_descendants() -> None:
    """SIGKILL every process reparented to this subreaper, until none is left (bounded)."""
    me = os.getpid()
    deadline = time.monotonic() + _KILL_STRAYS_SECONDS
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
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def _become_job(fds: list[int], imported: Imported) -> Job:
    """In `G`: take the job from its pipe and make this process what a cold start is once the imports are done."""
    try:
        for signum, handler in imported.handlers.items():
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, imported.mask)
        os.setsid()
        # The job's streams first: a job that cannot be read says so in its own output.
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        job = _read_job(fds[3])
        # Only the standard streams, as `ansible-playbook` started by the worker has.
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        os.chdir(job.cwd)
        os.environ.clear()
        os.environ.update(job.env)
        os.environb.update(imported.made_at_start)
        try:
            _make_own(imported)
        except Exception:
            # Where a cold start would fail in its import (its local temporary directory
            # cannot be made, say): it does, here, and fails as it fails.
            _start_cold(job)
        _retitle(job.title, job.name, job.env)
        _write_all(2, imported.output)
        for cell, value in imported.stream_cells:
            cell.cell_contents = value
        sys.argv = list(job.argv)
        sys.orig_argv = list(job.title)
        return job
    except _Withdrawn:
        # The worker gave up on this fork and started the job cold: nothing to say.
        os._exit(1)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            os.write(2, f"[ERROR]: warm start failed: {type(exc).__name__}: {exc}\n".encode())
        os._exit(1)


class _Withdrawn(Exception):
    """The pipe of a job ended before anything was written: the worker closed it unused."""


def _read_job(fd: int) -> Job:
    data = bytearray()
    while chunk := os.read(fd, 65536):
        data += chunk
        if len(data) > _MAX_JOB_BYTES:
            raise ValueError("the job is too large")
    os.close(fd)
    if not data:
        raise _Withdrawn
    return Job(json.loads(data))


def _start_cold(job: Job) -> NoReturn:
    """Become a fresh `ansible-playbook` of `job`, as the worker starts one: its program, argv and environment.

    The signals as a new process of the worker's has them: none blocked, handlers back to the
    default (as exec does), an ignored signal that this process inherited (SIGHUP under
    `nohup`) still ignored, and the two Python ignores itself (SIGPIPE, SIGXFSZ) reset, as the
    worker resets them for every process it starts. The session, working directory and streams
    are the job's already.
    """
    own_ignores = {signal.SIGPIPE, signal.SIGXFSZ}
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            if signum in own_ignores or signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.execvpe(job.argv[0], job.argv, job.env)  # noqa: S606 - the job's own argv, as the worker starts it


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _make_own(imported: Imported) -> None:
    """Make again what the import made for its own process: a cold start has its own."""
    constants = sys.modules.get("ansible.constants")
    # The exit handlers in the order the import registered them; each temporary directory is
    # made (registering its own clean-up) where the import made the parent's.
    atexit._clear()
    for function, args, kwargs in imported.exit_handlers:
        if constants is not None and imported.cleans((function, args, kwargs)):
            name = next(name for name, path in imported.temporary.items() if path == args[0])
            setattr(constants, name, _resolve(constants, name))
        else:
            atexit.register(function, *args, **kwargs)
    uuid: Any = sys.modules.get("uuid")
    node = getattr(uuid, "_node", None)
    if isinstance(node, int) and node & _MULTICAST_NODE:
        # No hardware address was found: the node is drawn per process, as `uuid` draws it.
        uuid._node = int.from_bytes(os.urandom(6), "big") | _MULTICAST_NODE
    ids: Any = sys.modules.get("ansible.utils.vars")
    if ids is not None and isinstance(getattr(ids, "random_int", None), str):
        # As `ansible.utils.vars` draws it: part of every task's and play's id.
        ids.random_int = f"{secrets.randbelow(getattr(ids, '_MAXSIZE', 2**32)):08x}"[:8]
    processes: Any = sys.modules.get("multiprocessing.process")
    if processes is not None:
        processes.current_process().authkey = os.urandom(32)
    logging: Any = sys.modules.get("logging")
    if logging is not None and hasattr(logging, "_startTime"):
        logging._startTime = time.time_ns() if isinstance(logging._startTime, int) else time.time()
    threading: Any = sys.modules.get("threading")
    main_thread: Any = threading.main_thread() if threading is not None else None
    if hasattr(main_thread, "_set_native_id"):
        # Python renews the thread's ident after a fork, but not (before 3.12) its native id,
        # nor does it count the main thread among those it waits for at exit, as it does at start.
        main_thread._set_native_id()
        shutdown_locks = getattr(threading, "_shutdown_locks", None)
        lock = getattr(main_thread, "_tstate_lock", None)
        if isinstance(shutdown_locks, set) and lock is not None and not main_thread.daemon:
            shutdown_locks.add(lock)


def _resolve(constants: Any, name: str) -> Any:
    """A setting resolved as `ansible.constants` resolves it: the constants defined before it are its variables.

    The warnings, deprecations and errors it notes, the import noted already: they are put back as they were.
    """
    config = constants.config
    names = list(config.get_configuration_definitions())
    later = set(names[names.index(name) + 1 :])
    variables = {key: value for key, value in vars(constants).items() if key not in later}
    notes = [getattr(config, attribute, None) for attribute in ("DEPRECATED", "WARNINGS", "_errors")]
    kept = [(note, list(note)) for note in notes if isinstance(note, list | set)]
    try:
        return config.get_config_value(name, variables=variables)
    finally:
        for note, items in kept:
            note.clear()
            if isinstance(note, list):
                note.extend(items)
            else:
                note.update(items)


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


def _retitle(title: list[str], name: str, env: dict[str, str]) -> None:
    """Make this process show the command line, name and environment of a cold start.

    Operators (and the worker's clean-up, which finds a run's processes by a variable in
    their environment) see the command and variables of the job, and Ansible's own forks
    inherit them. The parent was started with padding so that both fit.
    """
    # The job's own variables (the event FIFO, unique per run) first: they must survive a cut.
    shown = {key: value for key, value in env.items() if key.startswith("ANSIBLE_WORKER_")}
    shown.update(env)
    try:
        with open("/proc/self/stat", "rb") as stat_file:
            fields = stat_file.read().rsplit(b")", 1)[1].split()
        arg_start, arg_end, env_start, env_end = (int(value) for value in fields[45:49])
        _rewrite_area(arg_start, arg_end, title)
        _rewrite_area(env_start, env_end, [f"{key}={value}" for key, value in shown.items()])
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, ValueError, IndexError, AttributeError):
        pass  # only what ps shows; the run is the same


# -- the job: the script, as `__main__` --------------------------------------------------------------


def run_script(imported: Imported) -> None:
    """Run the whole script as `__main__` (its imports are done); its exit is this process's exit."""
    main = types.ModuleType("__main__")
    # As the interpreter sets up the `__main__` of a script.
    namespace = vars(main)
    namespace.update(
        __file__=imported.script,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", imported.script),
        __builtins__=sys.modules["builtins"],
        __annotations__={},
    )
    # Under every name the import gave this file's module as `__main__` (multiprocessing's
    # `__mp_main__`), the script's module now.
    own = sys.modules["__main__"]
    for name in [name for name, module in sys.modules.items() if module is own]:
        sys.modules[name] = main
    # What the parent and this process loaded for themselves is loaded again when the run needs it.
    for name in [name for name in sys.modules if name not in imported.modules]:
        del sys.modules[name]
    for path in [path for path in sys.path_importer_cache if path not in imported.finders]:
        del sys.path_importer_cache[path]
    try:
        exec(imported.code, namespace)  # noqa: S102 - the ansible-playbook script itself
    except SystemExit:
        raise
    except BaseException as exc:
        # As the interpreter reports an uncaught exception: from the script's own frame on.
        trace = exc.__traceback__
        while trace is not None and trace.tb_frame.f_code is not imported.code:
            trace = trace.tb_next
        sys.excepthook(type(exc), exc, trace)
        if isinstance(exc, KeyboardInterrupt):
            # And ends by the signal, as the interpreter does.
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(1) from None
