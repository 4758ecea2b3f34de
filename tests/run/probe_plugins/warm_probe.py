"""A callback plugin that writes down what the `ansible-playbook` process it runs in looks like from inside.

Enabled by the warm-start tests (`ANSIBLE_CALLBACKS_ENABLED=warm_probe`), it writes one JSON
file per run into `$WARM_PROBE_DIR` when the playbook starts: the value of every setting of
Ansible's configuration as `ansible.constants` holds it, and a fingerprint of the process
(streams, signals, descriptors, environment, limits, title, modules; with `$WARM_PROBE_DEEP`
also the global state of every module). The tests compare the files of warm and cold runs.
Standard library and Ansible only.
"""

from __future__ import annotations

import atexit
import gc
import json
import locale
import logging
import multiprocessing
import os
import re
import resource
import signal
import sys
import threading
import time
import types
import warnings
from typing import Any

from ansible import constants as C  # noqa: N812
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: warm_probe
    type: aggregate
    short_description: describe the process for the warm-start tests
    description: writes what the process looks like from inside to $WARM_PROBE_DIR
"""

# Memory addresses: a fork keeps its parent's layout, a fresh process gets its own (documented).
_ADDRESSES = re.compile(r"(_handle|_addr|_objects|_ident)$")
_DESCRIPTORS = (staticmethod, classmethod, property, types.MemberDescriptorType)
# Keyed by thread idents, which are addresses too.
_BY_ADDRESS = {"threading._active"}


def _shown(value: Any, limit: int) -> str:
    # A repr without the addresses it holds (`at 0x…`, an id() in a registry's key).
    return re.sub(r" at 0x[0-9a-f]+|\b\d{13,}\b", "<address>", repr(value))[:limit]


class _Describer:
    """A bounded, JSON-ready description of module global state (plain values in full, objects by their attributes)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def describe(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, (str, int, float, bool, type(None), bytes)):
            return _shown(value, 400)
        if id(value) in self.seen or depth > 3:
            return f"<{type(value).__name__}>"
        self.seen.add(id(value))
        if isinstance(value, (set, frozenset)):
            return sorted(repr(self.describe(item, depth + 1)) for item in list(value)[:100])
        if isinstance(value, (list, tuple)):
            return [self.describe(item, depth + 1) for item in list(value)[:60]]
        if isinstance(value, dict):
            return {_shown(key, 120): self.describe(item, depth + 1) for key, item in list(value.items())[:200]}
        if isinstance(value, (types.ModuleType, types.FunctionType, type, types.BuiltinFunctionType, types.MethodType)):
            return f"<{type(value).__name__}>"
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict):
            return {
                "__type__": type(value).__name__,
                **{
                    key: self.describe(item, depth + 1)
                    for key, item in list(attributes.items())[:100]
                    if not _ADDRESSES.search(str(key))
                },
            }
        return f"<{type(value).__name__}>"


def _module_state() -> dict[str, Any]:
    describer = _Describer()
    state: dict[str, Any] = {}
    for name, module in sorted(sys.modules.items()):
        if module is None or name == __name__ or name.endswith(".warm_probe"):
            continue
        for key, value in list(getattr(module, "__dict__", {}).items()):
            # Dunder names are the module's own, but for the record of warnings it has shown.
            if (key.startswith("__") and key != "__warningregistry__") or _ADDRESSES.search(key):
                continue
            if f"{name}.{key}" in _BY_ADDRESS and isinstance(value, dict):
                value = sorted(value.values(), key=repr)
            if isinstance(value, type) and value.__module__ == name:
                # A class of this module: the data it holds for all its instances (caches, registries).
                for attribute, held in list(vars(value).items()):
                    if attribute.startswith(("__", "_abc")) or _ADDRESSES.search(attribute):
                        continue
                    if callable(held) or isinstance(held, _DESCRIPTORS):
                        continue
                    state[f"{name}.{key}.{attribute}"] = describer.describe(held)
                continue
            if isinstance(value, (types.ModuleType, types.FunctionType, type)):
                continue
            state[f"{name}.{key}"] = describer.describe(value)
    return state


def _descriptor(fd: int) -> str:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
    target = re.sub(r"^(pipe|socket|anon_inode):.*", r"\1", target)
    # An unnamed temporary file: its inode is its own.
    return re.sub(r"/#\d+ \(deleted\)$", "/#N (deleted)", target)


def _stream(stream: Any) -> dict[str, Any]:
    buffer = getattr(stream, "buffer", None)
    raw = getattr(buffer, "raw", None)
    locks = {}
    for name, method in sorted(vars(buffer).items()) if hasattr(buffer, "__dict__") else []:
        cells = getattr(method, "__closure__", None) or ()
        locks[name] = sorted(type(cell.cell_contents).__name__ for cell in cells)
    return {
        "type": type(stream).__name__,
        "encoding": stream.encoding,
        "errors": stream.errors,
        "line_buffering": stream.line_buffering,
        "write_through": getattr(stream, "write_through", None),
        "seekable": raw.seekable() if raw is not None else None,
        "isatty": stream.isatty(),
        "name": getattr(raw, "name", None),
        "patched": locks,
    }


def _status_field(name: str) -> str:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def _wakeup_fd() -> int:
    # Reading it means setting it: put it back at once.
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd)
    return fd


def _process() -> dict[str, Any]:
    signals = {}
    for signum in sorted(signal.valid_signals()):
        try:
            signals[str(signum)] = re.sub(r" at 0x[0-9a-f]+", "", repr(signal.getsignal(signum)))
        except (OSError, ValueError):
            continue
    main = sys.modules["__main__"]
    with open("/proc/self/cmdline", "rb") as cmdline:
        # A warm job's argument area is its parent's, padded with NULs after the job's arguments.
        title = cmdline.read().rstrip(b"\0").decode(errors="replace").split("\0")
    with open("/proc/self/comm", encoding="utf-8") as comm:
        command = comm.read().strip()
    with open("/proc/self/environ", "rb") as environ:
        shown = sorted(entry for entry in environ.read().decode(errors="replace").split("\0") if entry)
    return {
        "cwd": os.getcwd(),
        "umask": _status_field("Umask"),
        "sigmask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "signals": signals,
        "wakeup_fd": _wakeup_fd(),
        "limits": {
            name: resource.getrlimit(getattr(resource, name)) for name in dir(resource) if name.startswith("RLIMIT_")
        },
        "descriptors": {str(fd): _descriptor(int(fd)) for fd in sorted(os.listdir("/proc/self/fd"), key=int)},
        "environ": dict(sorted(os.environ.items())),
        "proc_environ": shown,
        "cmdline": title,
        "comm": command,
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "executable": sys.executable,
        "flags": repr(sys.flags),
        "warnoptions": sys.warnoptions,
        "path": sys.path,
        "meta_path": [type(finder).__name__ for finder in sys.meta_path],
        "path_hooks": [getattr(hook, "__qualname__", repr(hook)) for hook in sys.path_hooks],
        # In the order they were made: the order of first imports.
        "path_importer_cache": list(sys.path_importer_cache),
        "modules": list(sys.modules),
        "main": {key: type(value).__name__ for key, value in sorted(vars(main).items())},
        "main_file": getattr(main, "__file__", None),
        "warnings_filters": [repr(entry) for entry in warnings.filters],
        "atexit_callbacks": atexit._ncallbacks(),
        "logging": {
            "root": [type(handler).__name__ for handler in logging.root.handlers],
            "ansible": [type(handler).__name__ for handler in logging.getLogger("ansible").handlers],
            "root_level": logging.root.level,
        },
        "threads": sorted(thread.name for thread in threading.enumerate()),
        "gc": [gc.isenabled(), gc.get_threshold()],
        "recursion_limit": sys.getrecursionlimit(),
        "switch_interval": sys.getswitchinterval(),
        "locale": locale.setlocale(locale.LC_ALL),
        "tzname": list(time.tzname),
        "stdin": _stream(sys.stdin),
        "stdout": _stream(sys.stdout),
        "stderr": _stream(sys.stderr),
        "parent_process": repr(multiprocessing.parent_process()),
    }


class CallbackModule(CallbackBase):  # type: ignore[misc]
    """Write the description when the playbook starts, before any task runs."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "warm_probe"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook: Any) -> None:
        directory = os.environ.get("WARM_PROBE_DIR")
        if not directory:
            return
        settings = {}
        for name in sorted(C.config.get_configuration_definitions()):
            settings[name] = getattr(C, name, "<missing>")
        probe = {
            "pid": os.getpid(),
            "config_file": C.config._config_file,
            "settings": json.loads(json.dumps(settings, default=repr)),
            "process": _process(),
            # The global state of every module, when asked for: large, and slow to write.
            "modules": _module_state() if os.environ.get("WARM_PROBE_DEEP") else {},
        }
        path = os.path.join(directory, f"{os.getpid()}.json")
        with open(path + ".part", "w", encoding="utf-8") as handle:
            json.dump(probe, handle, default=repr)
        os.rename(path + ".part", path)
