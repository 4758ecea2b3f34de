"""A warm Ansible parent: run the imports of the `ansible-playbook` script once, then fork one fresh child per job.

This file runs as a script of its own under the Python of `ansible-playbook` (which need
not be the worker's), so it uses only the standard library and Ansible, and nothing of
the worker's package: once the script's imports are done it loads the modules beside it
(`imported`, `fork_server`, `job_process`) by their paths. It is single-threaded: forking
a process with threads (the worker's Trio runtime) is unsafe, which is why the worker does
not fork itself.

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
  thread's native id, `uuid`'s node if it was drawn at random. Where making them fails
  as a cold start's import would fail (a temporary directory that cannot be made), `G`
  executes the script afresh with the job's argv and environment: a cold start, which
  fails as it fails;
- the fork locks Ansible put on the standard streams switched on again (a fork switches
  them off, for Ansible's workers);
- the normal end of a Python program (threads joined, exit handlers run, streams flushed,
  modules finalised); the import's own objects are frozen for the garbage collector, as in
  any fork server, so that the job's collections and its exit visit only what it made.

What cannot be handed over makes the parent refuse its configuration once imported
(`{"cold": reason}`): the import left a descriptor open (a log file), started a thread, or
registered an exit handler the parent did not see; the interpreter's start-up or the
import changed the environment (a job's process is given the job's, as sent); or the
interpreter is asked to report on its own start-up. A request is refused before its fork
(`"stale": true`) when a file the parent read has changed since it read it (a module, a
`.pth` file or a folder of the path, the user site and the folders `.pth` files name, also
missing ones, Ansible's configuration definitions and the `ansible.cfg` it read, OpenSSL's
configuration, the cowsay paths, the time zone, the user database), or when the job's
streams are not of the kind the parent started with (stdin /dev/null, stdout and stderr
one pipe). A file's signature is taken before it is read where the parent can (see
`_LoadWatch`), so that one changed while the parent imports is a change.

Protocol, on the SOCK_SEQPACKET socket whose descriptor is the first argument; each
packet is one JSON object:

- parent -> worker, once imported: `{"ready": true, "pid": N, "rss": KIB, "early": [NAME, ...],
  "config": PATH}` (the variables read while Ansible was imported, `*` for all, and those
  its configuration reads; the `ansible.cfg` Ansible read, or null), or `{"cold": "reason"}`,
  after which the parent exits
- worker -> parent: `{"op": "run", "id": I}` with four descriptors attached (SCM_RIGHTS):
  the job's stdin, stdout and stderr, and the read end of a pipe that will carry the job
- parent -> worker: `{"id": I, "pid": G, "root": C}` (or `{"id": I, "error": "...", "stale": BOOL}`),
  then, when the job has ended, `{"id": I, "exit": CODE}` (negative for a signal)
- worker -> `G`, on that pipe, once `G` exists: `{"argv": [...], "env": {...}, "cwd": "...",
  "title": [...], "name": "..."}`, the job itself. The parent and `C` have closed their
  copies of the pipe before the parent answers: what a job carries (its credentials) never
  enters a process that outlives the job. A pipe closed with nothing written (the worker
  gave up waiting for the answer and started the job cold) ends `G` without a word.

Each job is two processes. The root `C` is a child subreaper that forks `G`, the process
that becomes `ansible-playbook`: `G` starts its own session, so the worker ends the job by
signalling the process group `G`. Ansible's own workers start sessions of their own; when
their parent dies they are reparented to `C`, which kills all of them if the run was ended
(SIGUSR1 from the worker, or `G` died by a signal), and then exits with `G`'s exact status
(a signal without a core file of its own: `G` left the run's).

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


def _signature(path: str) -> "tuple[int, ...] | None":
    """What changes when a file is written, replaced or touched (None: missing or unreadable)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class _LoadWatch:
    """Signatures of files, each taken before the file is read, while the script's imports run.

    The import system's file loaders note a module's file before they read it: its source
    (before its cached bytecode is checked against it), its bytecode, or its shared library.
    A file rewritten once it was read (an upgrade in place, half done) then shows as changed
    when the next job asks, also when it was rewritten before the import was over.
    """

    def __init__(self) -> None:
        self.signatures: dict[str, tuple[int, ...] | None] = {}
        self._patched: list[tuple[Any, str, Any]] = []

    def note(self, path: object) -> None:
        if isinstance(path, str) and path not in self.signatures:
            self.signatures[path] = _signature(path)

    def start(self) -> None:
        loaders = sys.modules.get("_frozen_importlib_external")
        methods = (
            ("FileLoader", "get_data"),
            ("SourceFileLoader", "path_stats"),
            ("ExtensionFileLoader", "create_module"),
        )
        for owner_name, method in methods:
            owner = getattr(loaders, owner_name, None)
            original = vars(owner).get(method) if isinstance(owner, type) else None
            if original is not None:
                self._patched.append((owner, method, original))
                setattr(owner, method, self._noting(original))

    def _noting(self, original: "Any") -> "Any":
        note = self.note

        def noting(loader: "Any", *args: "Any") -> "Any":
            path = getattr(loader, "path", None)
            note(path)
            if getattr(loader, "name", None) == "ansible.config.manager" and isinstance(path, str):
                # Ansible's configuration definitions, read when `ansible.constants` is imported.
                note(os.path.join(os.path.dirname(path), "base.yml"))
            return original(loader, *args)

        return noting

    def stop(self) -> None:
        for owner, method, original in reversed(self._patched):
            setattr(owner, method, original)
        self._patched.clear()


def _path_files() -> set[str]:
    """What the import path is made of and what is found on it: to be signed before the imports look.

    Its folders (a package or a module added or removed changes its folder, or makes it), the
    `.pth` files in them, the folders those name, and the user site. The last two count even
    when missing: `site` adds them only if they exist when the interpreter starts.
    """
    paths: set[str] = set()
    for entry in sys.path:
        paths.add(entry)
        try:
            names = os.listdir(entry)
        except OSError:  # missing, or an archive
            continue
        for name in names:
            if name.endswith(".pth"):
                paths.add(os.path.join(entry, name))
                paths.update(_pth_folders(entry, name))
    site: Any = sys.modules.get("site")
    user_site = getattr(site, "USER_SITE", None)
    if getattr(site, "ENABLE_USER_SITE", False) and isinstance(user_site, str):
        paths.add(user_site)
    return {path for path in paths if os.path.isabs(path)}


def _pth_folders(directory: str, name: str) -> list[str]:
    """The folders a `.pth` file names, read as `site` reads it: each line that is not a comment or an import."""
    try:
        with open(os.path.join(directory, name), "rb") as handle:
            text = handle.read().decode(errors="surrogateescape")
    except OSError:
        return []
    return [
        os.path.abspath(os.path.join(directory, line.rstrip()))
        for line in text.splitlines()
        if line.strip() and not line.startswith(("#", "import ", "import\t"))
    ]


def _stream_kinds(fds: list[int]) -> tuple[object, ...]:
    """What a program can learn of its standard streams: the kind of file, terminal or not, blocking or not, 1 = 2."""
    kinds: list[object] = []
    for fd in fds[:3]:
        kinds.append((os.fstat(fd).st_mode & 0o170000, os.isatty(fd), os.get_blocking(fd)))
    first, second = os.fstat(fds[1]), os.fstat(fds[2])
    kinds.append((first.st_dev, first.st_ino) == (second.st_dev, second.st_ino))
    return tuple(kinds)


def _import_statements(source: bytes, script: str) -> "Any":
    """The script's top-level import statements alone, compiled to run as its own code."""
    tree = compile(source, script, "exec", _PYCF_ONLY_AST, dont_inherit=True)
    imports = type(tree)(body=[node for node in tree.body if type(node).__name__ in _IMPORT_NODES], type_ignores=[])
    return compile(imports, script, "exec", dont_inherit=True)


def _drained(fd: int) -> bytes:
    """Everything written to the memory file `fd`, which is then closed."""
    output = bytearray()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 65536):
        output += chunk
    os.close(fd)
    return bytes(output)


def _facts_before_imports() -> dict[str, object]:
    """What the process holds before the script's imports run: streams, descriptors, threads, exit handlers."""
    return {
        "streams": _stream_kinds([0, 1, 2]),
        # The parent compares each job's streams by the very same measure.
        "stream_kinds": _stream_kinds,
        "descriptors": set(os.listdir("/proc/self/fd")),
        "threads": sys.modules["threading"].active_count() if "threading" in sys.modules else 1,
        "exit_handlers_before": sys.modules["atexit"]._ncallbacks() if "atexit" in sys.modules else 0,
    }


def _output_into(capture: int) -> tuple[int, int]:
    """Point descriptors 1 and 2 at `capture`, flushing first; the duplicates that restore them."""
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    return saved


def _output_back(saved: tuple[int, int]) -> None:
    """Flush what the imports wrote and point descriptors 1 and 2 back where they were."""
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


def _run_script_imports(script: str) -> dict[str, object]:
    """Run the import statements of `script` as `__main__`, as its cold start does; what they did.

    Descriptors 1 and 2 are a memory file meanwhile (not a terminal, blocking: what Ansible
    checks of its streams when imported is what it would find on a job's pipe), and what
    is written there is kept to be written to each job's stderr.
    """
    with open(script, "rb") as handle:
        source = handle.read()
    code = _import_statements(source, script)
    facts = _facts_before_imports()
    read: set[str] = set()
    watch = _ExitHandlerWatch()
    loads = _LoadWatch()
    # What the interpreter loaded as it started, and where the imports will look: signed before they look.
    for module in list(sys.modules.values()):
        loads.note(getattr(module, "__file__", None))
    for path in _path_files():
        loads.note(path)
    capture = os.memfd_create(_MEMFD_NAME)
    # Now, by the clock that stamps files' changes.
    began = os.fstat(capture).st_ctime_ns
    environs: tuple[Any, ...] = (os.environ, os.environb)
    classes = [type(environ) for environ in environs]
    namespace = {"__name__": "__main__", "__file__": script, "__builtins__": sys.modules["builtins"]}
    sys.argv = [script]
    saved = _output_into(capture)
    _RecordingEnviron.read = read
    for environ in environs:
        environ.__class__ = _RecordingEnviron
    sys.meta_path.insert(0, watch)
    loads.start()
    try:
        exec(code, namespace)  # noqa: S102 - the script's own import statements
    except BaseException as exc:  # SystemExit too: the script would end the same way
        facts["failure"] = exc
    finally:
        loads.stop()
        watch.stop()
        for environ, original in zip(environs, classes, strict=True):
            environ.__class__ = original
        _RecordingEnviron.read = set()
        _output_back(saved)
    facts.update(output=_drained(capture), early=read, exit_handlers=watch.noted)
    # The signatures as each file was read, and the means to take more by the same measure.
    facts.update(signed=loads.signatures, began=began, signature=_signature, path_files=_path_files)
    # What a cold start has loaded at this point: whatever the parent loads later is its own.
    facts["modules"] = set(sys.modules)
    facts["finders"] = set(sys.path_importer_cache)
    facts["code"] = compile(source, script, "exec", dont_inherit=True)
    return facts


_ARGUMENTS = list(sys.argv)
_SCRIPT_IMPORTS: dict[str, object] | None = None
if __name__ == "__main__":
    # The script's directory heads the path, as when the script runs (this file's directory
    # holds the parent's own modules); then the script's imports, before anything else.
    sys.path[0] = os.path.dirname(os.path.realpath(sys.argv[2]))
    sys.path_importer_cache.pop(_OWN_DIRECTORY, None)
    _SCRIPT_IMPORTS = _run_script_imports(sys.argv[2])

# The parent's own modules, once Ansible has loaded what it loads: what a job loads again is
# what a cold start loads (`job_process.run_script` forgets every module the parent loaded).
import errno  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import socket  # noqa: E402
import types  # noqa: E402
from typing import Any  # noqa: E402


def _own_module(name: str) -> types.ModuleType:
    """The parent's own module `name`, from this file's directory, without a name in `sys.modules`.

    Not through `sys.path`: the script's directory heads it now, as in a cold start.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"warm_parent_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from ansible_worker.run.warm.script import fork_server, imported, job_process
elif __name__ == "__main__":
    imported, job_process, fork_server = (_own_module(name) for name in ("imported", "job_process", "fork_server"))


def main(arguments: list[str], facts: dict[str, Any]) -> int:
    """Serve fork requests once the script's imports are done; in a job's process, run the script.

    `arguments`: this file, the socket's descriptor, the script (then the padding).
    """
    sock = socket.socket(fileno=int(arguments[1]))
    state, refusal = imported.take_over(arguments[2], facts)
    if state is None:
        fork_server.send(sock, {"cold": refusal})
        return 1
    # What the import made moves to the collector's permanent generation, as fork servers do:
    # a job's collections, and its exit, then visit only what the job makes. Without it each
    # job would spend a tenth of a second at its exit walking the import's objects again.
    gc.freeze()
    try:
        job = fork_server.Parent(sock, state, job_root=job_process.job_root).serve()
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        return 0
    if job is None:
        return 0
    job_process.run_script(state)
    return 0


if __name__ == "__main__" and _SCRIPT_IMPORTS is not None:
    sys.exit(main(_ARGUMENTS, _SCRIPT_IMPORTS))
