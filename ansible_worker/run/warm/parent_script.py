"""A warm Ansible parent: run the imports of the `ansible-playbook` script once, then fork one fresh child per job.

This file runs as a script of its own under the Python of `ansible-playbook` (which need
not be the worker's), so it uses only the standard library and Ansible, and nothing of
the worker's package. It is single-threaded: forking a process with threads (the worker's
Trio runtime) is unsafe, which is why the worker does not fork itself.

The parent runs the import statements of the script (which the worker checked to be
imports and one `if __name__ == "__main__":` block) before it imports anything of its own,
and imports nothing else of Ansible: no module that a tree's plugins could replace is
loaded before a job. A job's process `G` then gets what a cold start of the script has at
the same point, and runs the whole script as `__main__`:

- its standard streams, working directory, environment, argv and `sys.orig_argv`, and the
  command line, name and environment that `ps` and /proc show;
- the signal dispositions and mask as they were after the import, and no descriptor but 0, 1, 2;
- what the import printed (Python's warnings among it), written to its own stderr;
- what the import made for its own process made again: Ansible's local temporary
  directory (with its clean-up in its place among the exit handlers), the random part of
  Ansible's ids, multiprocessing's authentication key, logging's start time, the main
  thread's native id;
- the fork locks Ansible put on the standard streams switched on again (a fork switches
  them off, for Ansible's workers);
- the normal end of a Python program (threads joined, exit handlers run, streams flushed,
  modules finalised); the import's own objects are frozen for the garbage collector, as in
  any fork server, so that the job's collections and its exit visit only what it made.

What cannot be handed over makes the parent refuse its configuration once imported
(`{"cold": reason}`): the import left a descriptor open (a log file), started a thread, or
registered an exit handler the parent did not see; or the interpreter is asked to report
on its own start-up. A request is refused before its fork (`"stale": true`) when a file
the parent read has changed since (a module, a `.pth` file or a directory of the path,
Ansible's configuration definitions, the cowsay paths, the time zone, the user database),
or when the job's streams are not of the kind the parent started with (stdin /dev/null,
stdout and stderr one pipe).

Protocol, on the SOCK_SEQPACKET socket whose descriptor is the first argument; each
packet is one JSON object:

- parent -> worker, once imported: `{"ready": true, "pid": N, "rss": KIB, "early": [NAME, ...]}`
  (the variables read while Ansible was imported, `*` for all, and those its configuration
  reads), or `{"cold": "reason"}`, after which the parent exits
- worker -> parent: `{"op": "run", "id": I}` with four descriptors attached (SCM_RIGHTS):
  the job's stdin, stdout and stderr, and the read end of a pipe that will carry the job
- parent -> worker: `{"id": I, "pid": G, "root": C}` (or `{"id": I, "error": "...", "stale": BOOL}`),
  then, when the job has ended, `{"id": I, "exit": CODE}` (negative for a signal)
- worker -> `G`, on that pipe, once `G` exists: `{"argv": [...], "env": {...}, "cwd": "...",
  "title": [...], "name": "..."}`, the job itself. The parent and `C` have closed their
  copies of the pipe before the parent answers: what a job carries (its credentials) never
  enters a process that outlives the job.

Each job is two processes. The root `C` is a child subreaper that forks `G`, the process
that becomes `ansible-playbook`: `G` starts its own session, so the worker ends the job by
signalling the process group `G`. Ansible's own workers start sessions of their own; when
their parent dies they are reparented to `C`, which kills all of them if the run was ended
(SIGUSR1 from the worker, or `G` died by a signal), and then exits with `G`'s exact status.

End of file on the socket (the worker exited, perhaps by a crash) ends the parent but not
its jobs, as a crash leaves a cold `ansible-playbook` running: the restarted worker ends them
by the marker in their environment. SIGTERM ends the parent and every job of it.
"""

# Only `os` and `sys` (which the interpreter loaded before this file runs) until the script's
# imports are done, so that every module is loaded when and as a cold start loads it.
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

_OWN_DIRECTORY = sys.path[0]
_PYCF_ONLY_AST = 0x400
_IMPORT_NODES = ("Import", "ImportFrom")
_MEMFD_NAME = "ansible-import-output"


class _RecordingEnviron(os._Environ):  # type: ignore[type-arg]
    """The class of `os.environ` and `os.environb` while the script's imports run: notes each name read.

    The objects stay the same (a module may keep a reference); only their class changes, and back.
    """

    read: set[str] = set()  # noqa: RUF012 - one set for the one import, replaced for it

    def __getitem__(self, key: "Any") -> "Any":
        _RecordingEnviron.read.add(key if isinstance(key, str) else os.fsdecode(key))
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str | bytes):
            _RecordingEnviron.read.add(key if isinstance(key, str) else os.fsdecode(key))
        return super().__contains__(key)

    def __iter__(self) -> "Iterator[Any]":
        # Every name may be read: none can be given to a job after its fork.
        _RecordingEnviron.read.add("*")
        return super().__iter__()


class _ExitHandlerWatch:
    """A finder first on `sys.meta_path` while the script's imports run; it finds nothing.

    Asked for a module, it first makes sure that `atexit.register`, once `atexit` is
    loaded, notes each handler registered, in order. A handler registered between the
    load of `atexit` and the next import escapes it: the count tells, and the parent then
    refuses its configuration.
    """

    def __init__(self) -> None:
        self.noted: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        self.original: Any = None

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        self.watch()

    def watch(self) -> None:
        module: Any = sys.modules.get("atexit")
        if module is None or self.original is not None:
            return
        original = self.original = module.register
        noted = self.noted

        def register(function: "Any", *args: "Any", **kwargs: "Any") -> "Any":
            noted.append((function, args, kwargs))
            return original(function, *args, **kwargs)

        module.register = register

    def stop(self) -> None:
        self.watch()
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        module: Any = sys.modules.get("atexit")
        if module is not None and self.original is not None:
            module.register = self.original


def _stream_kinds(fds: list[int]) -> tuple[object, ...]:
    """What a program can learn of its standard streams: the kind of file, terminal or not, blocking or not, 1 = 2."""
    kinds: list[object] = []
    for fd in fds[:3]:
        kinds.append((os.fstat(fd).st_mode & 0o170000, os.isatty(fd), os.get_blocking(fd)))
    first, second = os.fstat(fds[1]), os.fstat(fds[2])
    kinds.append((first.st_dev, first.st_ino) == (second.st_dev, second.st_ino))
    return tuple(kinds)


def _run_script_imports(script: str) -> dict[str, object]:
    """Run the import statements of `script` as `__main__`, as its cold start does; what they did.

    Descriptors 1 and 2 are a memory file meanwhile (not a terminal, blocking: what Ansible
    checks of its streams when imported is what it would find on a job's pipe), and what
    is written there is kept to be written to each job's stderr.
    """
    with open(script, "rb") as handle:
        source = handle.read()
    tree = compile(source, script, "exec", _PYCF_ONLY_AST, dont_inherit=True)
    imports = type(tree)(body=[node for node in tree.body if type(node).__name__ in _IMPORT_NODES], type_ignores=[])
    code = compile(imports, script, "exec", dont_inherit=True)
    facts: dict[str, object] = {
        "streams": _stream_kinds([0, 1, 2]),
        "descriptors": set(os.listdir("/proc/self/fd")),
        "threads": sys.modules["threading"].active_count() if "threading" in sys.modules else 1,
        "exit_handlers_before": sys.modules["atexit"]._ncallbacks() if "atexit" in sys.modules else 0,
    }
    read: set[str] = set()
    watch = _ExitHandlerWatch()
    capture = os.memfd_create(_MEMFD_NAME)
    saved = os.dup(1), os.dup(2)
    environs: tuple[Any, ...] = (os.environ, os.environb)
    classes = [type(environ) for environ in environs]
    namespace = {"__name__": "__main__", "__file__": script, "__builtins__": sys.modules["builtins"]}
    sys.argv = [script]
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    _RecordingEnviron.read = read
    for environ in environs:
        environ.__class__ = _RecordingEnviron
    sys.meta_path.insert(0, watch)
    try:
        exec(code, namespace)  # noqa: S102 - the script's own import statements
    except BaseException as exc:  # SystemExit too: the script would end the same way
        facts["failure"] = exc
    finally:
        watch.stop()
        for environ, original in zip(environs, classes, strict=True):
            environ.__class__ = original
        _RecordingEnviron.read = set()
        for stream in (sys.stdout, sys.stderr):
            # No contextlib yet; what does not reach the file is lost, as it would be.
            try:  # noqa: SIM105
                stream.flush()
            except Exception:  # noqa: S110
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
    output = bytearray()
    os.lseek(capture, 0, os.SEEK_SET)
    while chunk := os.read(capture, 65536):
        output += chunk
    os.close(capture)
    facts.update(output=bytes(output), early=read, exit_handlers=watch.noted)
    # What a cold start has loaded at this point: whatever the parent loads later is its own.
    facts["modules"] = set(sys.modules)
    facts["finders"] = set(sys.path_importer_cache)
    facts["code"] = compile(source, script, "exec", dont_inherit=True)
    return facts


_ARGUMENTS = list(sys.argv)
_SCRIPT_IMPORTS: dict[str, object] | None = None
if __name__ == "__main__":
    # The script's directory heads the path, as when the script runs (this file's directory
    # holds the worker's own modules); then the script's imports, before anything else.
    sys.path[0] = os.path.dirname(os.path.realpath(sys.argv[2]))
    sys.path_importer_cache.pop(_OWN_DIRECTORY, None)
    _SCRIPT_IMPORTS = _run_script_imports(sys.argv[2])

# The parent's own modules, once Ansible has loaded what it loads.
import atexit  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import errno  # noqa: E402
import gc  # noqa: E402
import importlib.machinery  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import selectors  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_MAX_PACKET = 65536
_MAX_JOB_BYTES = 16 * 1024 * 1024
_END_GRACE = 5.0
# Plain numbers: an operation on socket's flag enum would leave a member in its cache, which a cold start has not.
_TRUNCATED = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)
# Read when a process starts or Ansible is imported, beyond modules: a change means a cold start differs.
_READ_AT_START = ("/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")

ExitHandler = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Imported:
    """What the script's imports left, kept to hand the same state to each job."""

    def __init__(self, script: str, facts: dict[str, Any]) -> None:
        self.script = script
        # The whole script, run as `__main__` by each job.
        self.code: types.CodeType = facts["code"]
        # What the import wrote to stdout and stderr, byte for byte.
        self.output: bytes = facts["output"]
        self.streams: tuple[Any, ...] = facts["streams"]
        # Variables read during the import ("*": all), and those Ansible's configuration reads.
        self.early: set[str] = set(facts["early"])
        # Exit handlers registered by the import, in order.
        self.exit_handlers: list[ExitHandler] = list(facts["exit_handlers"])
        # Signal dispositions and mask right after the import.
        self.handlers = _signal_handlers()
        self.mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        # Settings whose value is a temporary directory made per process: the parent's own ones.
        self.temporary: dict[str, str] = {}
        # Closure cells of what the import put on the standard streams, with their values.
        self.stream_cells: list[tuple[Any, Any]] = []
        # Every file read that a cold start reads again -> its stat signature.
        self.files: dict[str, tuple[int, ...] | None] = {}
        # The modules and path finders there were when the imports were done.
        self.modules: set[str] = set(facts["modules"])
        self.finders: set[str] = set(facts["finders"])


def _take_over(script: str, facts: dict[str, Any]) -> tuple[_Imported | None, str | None]:
    """The state of the script's imports to hand over, or why this configuration cannot start warm."""
    failure = facts.get("failure")
    if failure is not None:
        sys.stderr.buffer.write(facts["output"])
        text = "".join(traceback.format_exception_only(type(failure), failure)).strip()
        return None, f"the import of Ansible failed: {text[-500:]}"
    imported = _Imported(script, facts)
    refusal = _refusal(facts, imported)
    if refusal is not None:
        return None, refusal
    constants = sys.modules.get("ansible.constants")
    if constants is not None:
        imported.early |= _configuration_variables(constants)
        imported.temporary = _forget_own_temporary_directories(constants, imported.exit_handlers)
    imported.stream_cells = _stream_patch_cells()
    imported.files = {path: _signature(path) for path in sorted(_files_read())}
    return imported, None


def _refusal(facts: dict[str, Any], imported: _Imported) -> str | None:
    """Why a job forked after this import would differ from a cold start in a way a fork cannot undo."""
    flags = sys.flags
    if flags.verbose or flags.inspect or "importtime" in sys._xoptions or os.environ.get("PYTHONPROFILEIMPORTTIME"):
        return "Python is asked to report on its own start-up (verbose, import times, or inspect)"
    now = set(os.listdir("/proc/self/fd"))
    opened = {fd for fd in now - facts["descriptors"] if os.path.exists(f"/proc/self/fd/{fd}")}
    if opened:
        names = sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in opened)
        return f"the import of Ansible left open {', '.join(names)} (a log file?), which every job would share"
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > facts["threads"]:
        return "the import of Ansible started a thread"
    if facts["exit_handlers_before"] or atexit._ncallbacks() != len(imported.exit_handlers):
        return "the import of Ansible registered an exit handler the warm parent could not see"
    return None


def _signal_handlers() -> dict[int, Any]:
    handlers = {}
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            handler = signal.getsignal(signum)
            if handler is not None:
                handlers[int(signum)] = handler
    return handlers


def _configuration_variables(constants: Any) -> set[str]:
    """Every variable a setting of Ansible's configuration reads (the parent's own copy of them holds)."""
    names: set[str] = set()
    with contextlib.suppress(Exception):
        for definition in constants.config.get_configuration_definitions().values():
            for entry in definition.get("env") or ():
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    names.add(entry["name"])
    return names


def _temporary_settings(constants: Any) -> list[str]:
    """Settings whose value is a temporary directory made for the process that reads them."""
    try:
        definitions = constants.config.get_configuration_definitions()
    except Exception:
        return []
    kinds = ("tmppath", "temppath", "tmp")
    return [name for name, definition in definitions.items() if definition.get("type") in kinds]


def _forget_own_temporary_directories(constants: Any, exit_handlers: list[ExitHandler]) -> dict[str, str]:
    """Remove the parent's own temporary directories (it never runs a playbook), and their exit handlers.

    Each job makes its own when it starts, as a cold start makes one when it is imported.
    """
    values = {name: getattr(constants, name, None) for name in _temporary_settings(constants)}
    own = {name: value for name, value in values.items() if isinstance(value, str)}
    for path in own.values():
        with contextlib.suppress(OSError):
            os.rmdir(path)
    atexit._clear()
    for function, args, kwargs in exit_handlers:
        if not _cleans((function, args, kwargs), own):
            atexit.register(function, *args, **kwargs)
    return own


def _cleans(handler: ExitHandler, own: dict[str, str]) -> bool:
    """Whether an exit handler is the clean-up of one of the parent's own temporary directories."""
    args = handler[1]
    return bool(args) and args[0] in own.values()


def _stream_patch_cells() -> list[tuple[Any, Any]]:
    """The closure cells of the methods the import put on the standard streams' buffers, with their values.

    Ansible wraps their writes in a lock that every fork switches off (its workers are
    forks); in a job's process, which Ansible takes for its main one, the lock is on.
    """
    cells = []
    for stream in (sys.stdout, sys.stderr):
        buffer = getattr(stream, "buffer", None)
        for method in (getattr(buffer, "__dict__", None) or {}).values():
            for cell in getattr(method, "__closure__", None) or ():
                with contextlib.suppress(ValueError):
                    cells.append((cell, cell.cell_contents))
    return cells


def _files_read() -> set[str]:
    """Files the import used (beyond Ansible's configuration, which the worker checks), to be checked for changes."""
    files = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
    paths = {path for path in files if isinstance(path, str)}
    for entry in sys.path:
        # A package, a module or a .pth file added or removed changes the directory (or makes it).
        paths.add(entry)
        if os.path.isdir(entry):
            with contextlib.suppress(OSError):
                paths.update(os.path.join(entry, name) for name in os.listdir(entry) if name.endswith(".pth"))
    manager = getattr(sys.modules.get("ansible.config.manager"), "__file__", None)
    if isinstance(manager, str):
        paths.add(os.path.join(os.path.dirname(manager), "base.yml"))
    display = sys.modules.get("ansible.utils.display")
    # Where Display looks for cowsay: whether one is there changes every banner.
    paths.update(os.fsdecode(path) for path in getattr(display, "b_COW_PATHS", ()))
    paths.update(_READ_AT_START)
    return {path for path in paths if os.path.isabs(path)}


def _signature(path: str) -> tuple[int, ...] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _stale(imported: _Imported) -> str | None:
    for path, signature in imported.files.items():
        if _signature(path) != signature:
            return f"{path} changed since the warm parent read it"
    return None


# -- the parent: one fork per request ---------------------------------------------------------------


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


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    # The worker may be gone; end of file on the socket ends us next.
    with contextlib.suppress(OSError):
        sock.send(json.dumps(message).encode())


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class _Job:
    """What the worker sent `G`: the job's argv, environment and working directory, and how it shows in `ps`."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.argv = [str(arg) for arg in message["argv"]]
        self.env = {str(name): str(value) for name, value in message["env"].items()}
        self.cwd = str(message["cwd"])
        self.title = [str(arg) for arg in message["title"]]
        self.name = str(message["name"])


class _Parent:
    """The request loop: fork on `run`, report each job's end, end everything on end of file."""

    def __init__(self, sock: socket.socket, imported: _Imported) -> None:
        self.sock = sock
        self.imported = imported
        # root pid -> (job id, leader pid)
        self.jobs: dict[int, tuple[int, int]] = {}
        self.stopping = False
        self.own_fds: list[int] = []
        self.selector: selectors.BaseSelector | None = None

    def serve(self) -> _Job | None:
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
        _send(self.sock, {"ready": True, "pid": os.getpid(), "rss": _rss_kib(), "early": sorted(self.imported.early)})
        while not self.stopping:
            for key, _ in selector.select():
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 4096)
                    self._reap()
                    continue
                answer = self._take_request()
                if isinstance(answer, _Job):
                    return answer
                if not answer:
                    # The worker is gone (perhaps killed): its jobs live on, as cold ones
                    # would, until the restarted worker ends them by their marker.
                    return None
        self._end_all()
        return None

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _take_request(self) -> bool | _Job:
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
            if _stream_kinds(fds) != self.imported.streams:
                raise ValueError("the job's standard streams are not of the kind the warm parent started with")
            stale = _stale(self.imported)
            if stale is not None:
                _send(self.sock, {"id": job_id, "error": stale, "stale": True})
                return True
            return self._fork(int(job_id), fds)
        except Exception as exc:
            _send(self.sock, {"id": job_id, "error": f"{type(exc).__name__}: {exc}"})
            return True
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _fork(self, job_id: int, fds: list[int]) -> bool | _Job:
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
        _send(self.sock, {"id": job_id, "pid": leader, "root": root})
        return True

    def _in_root(self, fds: list[int], report_fd: int) -> _Job:
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
        return _job_root(fds, report_fd, self.imported)

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
                _send(self.sock, {"id": job[0], "exit": os.waitstatus_to_exitcode(status)})

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


# -- a job's root `C` and its process `G` -----------------------------------------------------------


def _job_root(fds: list[int], report_fd: int, imported: _Imported) -> _Job:
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
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def _become_job(fds: list[int], imported: _Imported) -> _Job:
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
        _retitle(job.title, job.name, job.env)
        _write_all(2, imported.output)
        for cell, value in imported.stream_cells:
            cell.cell_contents = value
        _make_own(imported)
        sys.argv = list(job.argv)
        sys.orig_argv = list(job.title)
        return job
    except BaseException as exc:
        with contextlib.suppress(Exception):
            os.write(2, f"[ERROR]: warm start failed: {type(exc).__name__}: {exc}\n".encode())
        os._exit(1)


def _read_job(fd: int) -> _Job:
    data = bytearray()
    while chunk := os.read(fd, 65536):
        data += chunk
        if len(data) > _MAX_JOB_BYTES:
            raise ValueError("the job is too large")
    os.close(fd)
    return _Job(json.loads(data))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _make_own(imported: _Imported) -> None:
    """Make again what the import made for its own process: a cold start has its own."""
    constants = sys.modules.get("ansible.constants")
    # The exit handlers in the order the import registered them; each temporary directory is
    # made (registering its own clean-up) where the import made the parent's.
    atexit._clear()
    for function, args, kwargs in imported.exit_handlers:
        if constants is not None and _cleans((function, args, kwargs), imported.temporary):
            name = next(name for name, path in imported.temporary.items() if path == args[0])
            setattr(constants, name, _resolve(constants, name))
        else:
            atexit.register(function, *args, **kwargs)
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


def _run_script(imported: _Imported) -> None:
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


def main(arguments: list[str], facts: dict[str, Any]) -> int:
    """Serve fork requests once the script's imports are done; in a job's process, run the script.

    `arguments`: this file, the socket's descriptor, the script (then the padding).
    """
    sock = socket.socket(fileno=int(arguments[1]))
    imported, refusal = _take_over(arguments[2], facts)
    if imported is None:
        _send(sock, {"cold": refusal})
        return 1
    # What the import made moves to the collector's permanent generation, as fork servers do:
    # a job's collections, and its exit, then visit only what the job makes. Without it each
    # job would spend a tenth of a second at its exit walking the import's objects again.
    gc.freeze()
    try:
        job = _Parent(sock, imported).serve()
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        return 0
    if job is None:
        return 0
    _run_script(imported)
    return 0


if __name__ == "__main__" and _SCRIPT_IMPORTS is not None:
    sys.exit(main(_ARGUMENTS, _SCRIPT_IMPORTS))
