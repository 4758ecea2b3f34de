"""What the script's imports left in the warm parent, kept to hand the same state to each job, or why it cannot be.

Part of the warm parent (`warm_parent.py`), loaded by it once the script's imports are done:
the standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

# Read when a process starts or Ansible is imported, beyond modules: a change means a cold start differs.
_READ_AT_START = ("/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
# The clock of files' change times advances in ticks: a file whose change time is this close
# to the start of the import may have changed during it.
_TICK_NS = 20_000_000
# The signature noted for a file that changed while the parent imported: no file has it.
_CHANGED_DURING_IMPORT = (-1,)
# What the interpreter sets LC_CTYPE to when it coerces the C locale (PEP 538).
_COERCED_LOCALES = (b"C.UTF-8", b"C.utf8", b"UTF-8")

ExitHandler = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class Imported:
    """What the script's imports left, kept to hand the same state to each job."""

    def __init__(self, script: str, facts: dict[str, Any]) -> None:
        self.script = script
        # The whole script, run as `__main__` by each job.
        self.code: types.CodeType = facts["code"]
        # What the import wrote to stdout and stderr, byte for byte.
        self.output: bytes = facts["output"]
        # What a program can learn of its standard streams (`stream_kinds`), as the parent started.
        self.streams: tuple[Any, ...] = facts["streams"]
        self._stream_kinds: Callable[[list[int]], tuple[Any, ...]] = facts["stream_kinds"]
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
        # Every file read that a cold start reads again -> its stat signature as it was read.
        self.files: dict[str, tuple[int, ...] | None] = {}
        self.signature: Callable[[str], tuple[int, ...] | None] = facts["signature"]
        # The configuration file Ansible read (None: none), which the worker checks against the job's key.
        self.config_file: str | None = None
        # Variables the interpreter set as it started, as it does in every process: given to each job.
        self.made_at_start: dict[bytes, bytes] = {}
        # The modules and path finders there were when the imports were done.
        self.modules: set[str] = set(facts["modules"])
        self.finders: set[str] = set(facts["finders"])

    def streams_match(self, fds: list[int]) -> bool:
        """Whether a job's streams are of the kind the parent started with (stdin /dev/null, one pipe for both)."""
        return bool(self._stream_kinds(fds) == self.streams)

    def cleans(self, handler: ExitHandler) -> bool:
        """Whether an exit handler is the clean-up of one of the parent's own temporary directories."""
        args = handler[1]
        return bool(args) and args[0] in self.temporary.values()

    def changed(self) -> str | None:
        """Which file the parent read has changed since, if any: a job forked now would differ from a cold start."""
        for path, signature in self.files.items():
            if signature == _CHANGED_DURING_IMPORT:
                return f"{path} changed while the warm parent imported Ansible"
            if self.signature(path) != signature:
                return f"{path} changed since the warm parent read it"
        return None


def take_over(script: str, facts: dict[str, Any]) -> tuple[Imported | None, str | None]:
    """The state of the script's imports to hand over, or why this configuration cannot start warm."""
    failure = facts.get("failure")
    if failure is not None:
        sys.stderr.buffer.write(facts["output"])
        text = "".join(traceback.format_exception_only(type(failure), failure)).strip()
        return None, f"the import of Ansible failed: {text[-500:]}"
    imported = Imported(script, facts)
    refusal = _refusal(facts, imported)
    if refusal is not None:
        return None, refusal
    constants = sys.modules.get("ansible.constants")
    if constants is not None:
        imported.early |= _configuration_variables(constants)
        _forget_own_temporary_directories(constants, imported)
    imported.stream_cells = _stream_patch_cells()
    imported.config_file = _config_file(constants)
    imported.files = _signatures(facts, imported)
    return imported, None


def _config_file(constants: Any) -> str | None:
    path = getattr(getattr(constants, "config", None), "_config_file", None)
    return path if isinstance(path, str) else None


def _signatures(facts: dict[str, Any], imported: Imported) -> dict[str, tuple[int, ...] | None]:
    """Every file read that a cold start reads again -> its signature as it was read.

    Taken before the read where the parent could (`_LoadWatch`). For a file it learns of only
    now (what OpenSSL read, say), a change since the import began counts as a change.
    """
    signed: dict[str, tuple[int, ...] | None] = facts["signed"]
    began, now = facts["began"] - _TICK_NS, time.time_ns() + _TICK_NS
    files: dict[str, tuple[int, ...] | None] = {}
    for path in sorted(_files_read(facts["path_files"]()) | _openssl_files() | _mapped_files()):
        if path in signed:
            files[path] = signed[path]
            continue
        signature = imported.signature(path)
        # A change time past now is a clock that cannot tell (a file system's own): taken as it is.
        changed = signature is not None and began <= signature[4] <= now
        files[path] = _CHANGED_DURING_IMPORT if changed else signature
    if imported.config_file is not None:
        # The worker checks that it is as it was when the job's key was made, before this parent started.
        files[imported.config_file] = imported.signature(imported.config_file)
    return files


def _openssl_files() -> set[str]:
    """OpenSSL's configuration as each OpenSSL library loaded here read it: its file and what that includes.

    The file is the one the library itself names (`OPENSSL_CONF`, or its own default).
    """
    libraries: set[str] = set()
    try:
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and _is_libcrypto(os.path.basename(fields[5].rstrip())):
                    libraries.add(os.fsdecode(fields[5].rstrip()))
    except OSError:
        return set()
    files: set[str] = set()
    for library in sorted(libraries):
        try:
            crypto = ctypes.CDLL(library)
            default_file, free = crypto.CONF_get1_default_config_file, crypto.CRYPTO_free
        except (OSError, AttributeError):
            continue  # gone since, or older than OpenSSL 1.1.1
        default_file.restype = ctypes.c_void_p
        free.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int)
        pointer = default_file()
        if pointer:
            files.add(os.fsdecode(ctypes.string_at(pointer)))
            free(pointer, b"", 0)
    return _openssl_included(files)


def _mapped_files() -> set[str]:
    """The files mapped into this process: the interpreter, the shared libraries its modules link.

    A package manager replaces a library by renaming a new one over it; a cold start loads the
    new one, this parent keeps the old. A mapping whose file was gone before the parent looked
    (memfd, a deleted temporary file) has no name a cold start could open: not watched.
    """
    found: set[str] = set()
    try:
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or not fields[5].startswith(b"/"):
                    continue  # anonymous memory, the stack, [vdso]
                path = os.fsdecode(fields[5].rstrip(b"\n"))
                if not path.endswith(" (deleted)") and not path.startswith(("/dev/", "/proc/", "/sys/", "/memfd:")):
                    found.add(path)
    except OSError:
        return set()
    return found


def _is_libcrypto(name: bytes) -> bool:
    # libcrypto.so.3, or a copy a wheel ships under a name of its own (libcrypto-1a2b3c4d.so.3).
    return name.startswith(b"libcrypto") and b".so" in name


def _openssl_included(files: set[str], limit: int = 64) -> set[str]:
    """`files` and what they include (`.include PATH`, a file or a folder of `*.cnf` and `*.conf`), up to `limit`."""
    found: set[str] = set()
    pending = sorted(files)
    # Where OpenSSL looks for a relative one: this folder, or the working directory.
    bases = [base for base in (os.environ.get("OPENSSL_CONF_INCLUDE"), os.getcwd()) if base]
    while pending and len(found) < limit:
        path = pending.pop()
        if path in found:
            continue
        found.add(path)
        if os.path.isdir(path):
            with contextlib.suppress(OSError):
                names = sorted(os.listdir(path))
                pending.extend(os.path.join(path, name) for name in names if name.endswith((".cnf", ".conf")))
            continue
        try:
            with open(path, "rb") as handle:
                text = handle.read(1 << 20).decode(errors="surrogateescape")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.strip()
            if not words.startswith(".include"):
                continue
            target = words.removeprefix(".include").strip().removeprefix("=").strip()
            if os.path.isabs(target):
                pending.append(target)
            elif target:
                pending.extend(os.path.join(base, target) for base in bases)
    return found


def _refusal(facts: dict[str, Any], imported: Imported) -> str | None:
    """Why a job forked after this import would differ from a cold start in a way a fork cannot undo."""
    flags = sys.flags
    if flags.verbose or flags.inspect or "importtime" in sys._xoptions or os.environ.get("PYTHONPROFILEIMPORTTIME"):
        return "Python is asked to report on its own start-up (verbose, import times, or inspect)"
    now = set(os.listdir("/proc/self/fd"))
    opened = {fd for fd in now - facts["descriptors"] if os.path.exists(f"/proc/self/fd/{fd}")}
    if opened:
        names = sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in opened)
        return f"the import of Ansible left open {', '.join(names)} (a log file?), which every job would share"
    changed = _environment_changes(imported)
    if changed:
        shown = ", ".join(changed[:8]) + (", …" if len(changed) > 8 else "")
        return f"Python's start-up or the import of Ansible changed the environment ({shown}): a job would not have it"
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > facts["threads"]:
        return "the import of Ansible started a thread"
    if facts["exit_handlers_before"] or atexit._ncallbacks() != len(imported.exit_handlers):
        return "the import of Ansible registered an exit handler the warm parent could not see"
    return None


def _environment_changes(imported: Imported) -> list[str]:
    """The variables that `os.environ` holds otherwise than this process was started with.

    Set or removed by a `.pth` file, `sitecustomize`, `usercustomize` or the script's imports:
    a cold start has them, and a job's process is given the job's environment as it was sent.
    All but one: the interpreter sets `LC_CTYPE` when it coerces the C locale, as every start
    with the same locale variables (in the key) does: that is noted in `imported`, for each job.
    """
    with open("/proc/self/environ", "rb") as handle:
        block = handle.read()
    started: dict[bytes, bytes] = {}
    for entry in block.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        if equals:
            # As Python reads its environment: the first of a name counts.
            started.setdefault(name, value)
    now = dict(os.environb)
    changed = {name for name in started.keys() | now.keys() if started.get(name) != now.get(name)}
    coerced = now.get(b"LC_CTYPE")
    if b"LC_CTYPE" in changed and coerced in _COERCED_LOCALES and not started.get(b"LC_ALL"):
        changed.discard(b"LC_CTYPE")
        imported.made_at_start[b"LC_CTYPE"] = coerced
    return sorted(os.fsdecode(name) for name in changed)


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


def _forget_own_temporary_directories(constants: Any, imported: Imported) -> None:
    """Remove the parent's own temporary directories (it never runs a playbook), and their exit handlers.

    Each job makes its own when it starts, as a cold start makes one when it is imported.
    """
    values = {name: getattr(constants, name, None) for name in _temporary_settings(constants)}
    imported.temporary = {name: value for name, value in values.items() if isinstance(value, str)}
    for path in imported.temporary.values():
        with contextlib.suppress(OSError):
            os.rmdir(path)
    atexit._clear()
    for function, args, kwargs in imported.exit_handlers:
        if not imported.cleans((function, args, kwargs)):
            atexit.register(function, *args, **kwargs)


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


def _files_read(path_files: set[str]) -> set[str]:
    """Files the interpreter and the import read, and folders where they looked, to check for changes.

    `path_files`: the folders of the path, the `.pth` files and what they name, the user site.
    """
    files = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
    paths = {path for path in files if isinstance(path, str)} | path_files
    manager = getattr(sys.modules.get("ansible.config.manager"), "__file__", None)
    if isinstance(manager, str):
        paths.add(os.path.join(os.path.dirname(manager), "base.yml"))
    display = sys.modules.get("ansible.utils.display")
    # Where Display looks for cowsay: whether one is there changes every banner.
    paths.update(os.fsdecode(path) for path in getattr(display, "b_COW_PATHS", ()))
    paths.update(_READ_AT_START)
    return {path for path in paths if os.path.isabs(path)}
