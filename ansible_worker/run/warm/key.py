"""Decide whether a job may start warm, and from which parent: the key of everything Ansible reads at import.

Ansible builds its configuration once, when `ansible.constants` is imported: from the
`ansible.cfg` it finds (`ANSIBLE_CONFIG`, the working directory, `~/.ansible.cfg`,
`/etc/ansible/ansible.cfg`) and from `ANSIBLE_*` variables. A warm parent is only valid
for the exact inputs it imported with, so the key holds all of them: the interpreter and
the script, the working directory, every candidate configuration file (path, and content
or absence), the file creation mask and resource limits the parent inherits, and the whole
environment but the variables that are the job's own (its event FIFO, its credentials).
Those reach only the job's process, so they must be variables nothing reads at import.
Anything that cannot be checked gives a reason instead of a key, which means a cold start.

The configuration files are found as Ansible finds them, with the job's environment, and
signed before they are read: once a parent has imported Ansible, `changed_since` and
`read_elsewhere` tell whether it read what the key holds.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pwd
import re
import resource
import shutil
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

MAX_CONFIG_BYTES = 1_048_576
_MAX_SCRIPT_BYTES = 65536
_PLAYBOOK_MAIN = ("ansible.cli.playbook", "main")
# Read when a process starts, by the interpreter, the C library, OpenSSL or cryptography,
# not through `os.environ` (where the parent sees what Ansible reads and says so).
_READ_AT_START_PREFIXES = ("PYTHON", "LC_", "OPENSSL_", "SSL_CERT_", "CRYPTOGRAPHY_", "LD_", "MALLOC_", "TERMINFO")
_READ_AT_START = frozenset(
    {
        "LANG",
        "LANGUAGE",
        "TZ",
        "TZDIR",
        "HOME",
        "PATH",
        "TMPDIR",
        "TEMP",
        "TMP",
        "USER",
        "LOGNAME",
        "LNAME",
        "USERNAME",
        "GLIBC_TUNABLES",
        "LOCPATH",
        "NLSPATH",
        "GCONV_PATH",
        "TERM",
        "COLUMNS",
        "LINES",
        "RES_OPTIONS",
        "LOCALDOMAIN",
        "HOSTALIASES",
        "__PYVENV_LAUNCHER__",
    }
)


@dataclass(frozen=True, slots=True)
class Interpreter:
    """How to start a warm parent for one `ansible-playbook` script, and what a cold start of it shows.

    `command` + our script starts the parent; a cold process shows `title` + its argv as its
    command line (what the kernel and `env` make of the `#!` line), and `name` as its name.
    """

    command: tuple[str, ...]
    script: str
    title: tuple[str, ...]
    name: str


class ColdStart(Exception):
    """Why a job starts cold; the message is the reason logged."""


def find_interpreter(script: str, env: Mapping[str, str]) -> Interpreter:
    """The Python that runs `script` (from its `#!` line, read as the kernel reads it), if it is Ansible's own script.

    The script must be imports and one `if __name__ == "__main__":` block, with `main`
    imported from `ansible.cli.playbook`: the warm parent runs its imports, and each job
    runs the whole of it.

    Errors: `ColdStart` when it is anything else (a wrapper, a binary, something unknown).
    """
    try:
        with open(script, "rb") as handle:
            source = handle.read(_MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        raise ColdStart(f"cannot read {script}: {exc.strerror}") from exc
    if not source.startswith(b"#!"):
        raise ColdStart(f"{script} has no #! line")
    if len(source) > _MAX_SCRIPT_BYTES or not _is_playbook_script(source):
        raise ColdStart(f"{script} is not the standard ansible-playbook script")
    # The kernel: the interpreter up to the first blank, then at most one argument, the rest of the line.
    line = source[2:].split(b"\n", 1)[0].decode(errors="surrogateescape").strip(" \t")
    interpreter, _, argument = line.replace("\t", " ").partition(" ")
    argument = argument.strip(" ")
    if not interpreter:
        raise ColdStart(f"{script} has an empty #! line")
    if os.path.basename(interpreter) == "env":
        if not argument or " " in argument or argument.startswith("-"):
            raise ColdStart(f"{script}: a #! line with env and options")
        found = shutil.which(argument, path=env.get("PATH", os.defpath))
        if found is None:
            raise ColdStart(f"{script}: {argument} not found on PATH")
        command: tuple[str, ...] = (found,)
        title: tuple[str, ...] = (argument,)
        name = os.path.basename(found)
    else:
        command = title = (interpreter, argument) if argument else (interpreter,)
        name = os.path.basename(script)
    if "python" not in os.path.basename(command[0]):
        raise ColdStart(f"{script} is not run by Python ({command[0]})")
    return Interpreter(command, os.path.abspath(script), title, name)


def _is_playbook_script(source: bytes) -> bool:
    """Imports (`from ansible.cli.playbook import main` among them), then `if __name__ == "__main__":`, nothing else."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    *imports, guard = tree.body or [ast.Pass()]
    imports = [node for node in imports if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    if not all(isinstance(node, ast.Import | ast.ImportFrom) for node in imports):
        return False
    imports_main = any(
        isinstance(node, ast.ImportFrom)
        and node.module == _PLAYBOOK_MAIN[0]
        and any(alias.name == _PLAYBOOK_MAIN[1] and alias.asname is None for alias in node.names)
        for node in imports
    )
    return imports_main and _is_main_guard(guard)


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or node.orelse:
        return False
    test = node.test
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


Signature = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class WarmKey:
    """The key of a job's configuration, and what to check once a parent for it has imported Ansible.

    `configs`: each place Ansible looks for `ansible.cfg`, with its signature (None: missing)
    taken before its content went into the key; `cwd_mode`: the mode of the working directory.
    """

    digest: str
    configs: tuple[tuple[str, Signature | None], ...]
    cwd_mode: int


def config_candidates(cwd: Path, env: Mapping[str, str]) -> list[Path]:
    """Where Ansible looks for `ansible.cfg`, in its order (each may be missing), as it looks with `env`.

    As `ansible.config.manager.find_ini_config_file`: `ANSIBLE_CONFIG` with its variables and
    `~` expanded from the job's environment, relative to the working directory, a folder
    meaning its `ansible.cfg`; then the working directory, `~/.ansible.cfg`, `/etc/ansible`.
    """
    candidates: list[Path] = []
    from_env = env.get("ANSIBLE_CONFIG")
    if from_env is not None:
        path = os.path.normpath(os.path.join(cwd, expand_user(expand_variables(from_env, env), env)))
        candidates.append(Path(path, "ansible.cfg") if os.path.isdir(path) else Path(path))
    candidates.append(cwd / "ansible.cfg")
    candidates.append(Path(os.path.normpath(os.path.join(cwd, expand_user("~/.ansible.cfg", env)))))
    candidates.append(Path("/etc/ansible/ansible.cfg"))
    return candidates


_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)


def expand_variables(text: str, env: Mapping[str, str]) -> str:
    """`os.path.expandvars` with `env` for the environment: `$NAME` and `${NAME}` of a set variable."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).removeprefix("{").removesuffix("}")
        return env.get(name, match.group(0))

    return _VARIABLE.sub(value, text)


def expand_user(text: str, env: Mapping[str, str]) -> str:
    """`os.path.expanduser` with `env` for the environment: `~` is its `HOME` (else the user's), `~NAME` that user's."""
    if not text.startswith("~"):
        return text
    end = text.find("/", 1)
    end = len(text) if end < 0 else end
    try:
        if end == 1:
            home = env["HOME"] if "HOME" in env else pwd.getpwuid(os.getuid()).pw_dir
        else:
            home = pwd.getpwnam(text[1:end]).pw_dir
    except KeyError:
        return text
    return (home.rstrip("/") + text[end:]) or "/"


def warm_key(interpreter: Interpreter, *, cwd: Path, env: Mapping[str, str], late: Collection[str]) -> WarmKey:
    """A digest of every input Ansible reads at import, for a job run in `cwd` with `env`.

    `late` names the job's own variables (the event FIFO, its credentials): they go to the
    job's process only, so they are not part of the key (see `read_at_start`).

    Errors: `ColdStart` when a configuration candidate exists but cannot be read in full.
    """
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode(errors="surrogateescape")
            digest.update(len(data).to_bytes(8, "big") + data)

    add("interpreter", *interpreter.command, interpreter.script)
    try:
        info = os.stat(interpreter.script)
        add(info.st_ino, info.st_mtime_ns, info.st_size)
        directory = os.stat(cwd)
    except OSError as exc:
        raise ColdStart(f"cannot inspect {exc.filename}: {exc.strerror}") from exc
    # Ansible skips ./ansible.cfg in a world-writable directory.
    cwd_mode = stat.S_IMODE(directory.st_mode)
    add("cwd", cwd, cwd_mode)
    configs: list[tuple[str, Signature | None]] = []
    for candidate in config_candidates(cwd, env):
        signature, content = _content(candidate)
        add("config", candidate, content)
        configs.append((str(candidate), signature))
    # What a process inherits from the worker: the parent inherited it when it started.
    add("umask", _umask(), "limits", *_limits())
    add("env")
    for name in sorted(env):
        if name not in late:
            add(name, env[name])
    return WarmKey(digest.hexdigest(), tuple(configs), cwd_mode)


def changed_since(key: WarmKey, cwd: Path) -> str | None:
    """Why a place where Ansible looks for its configuration may not be as it was when `key` read it.

    Checked once a parent for `key` has imported Ansible: a file written meanwhile has
    another change time (whatever its content now), so the parent may hold another text.
    """
    for path, signature in key.configs:
        try:
            now: Signature | None = signature_of(os.stat(path))
        except FileNotFoundError:
            now = None
        except OSError as exc:
            return f"cannot inspect {path}: {exc.strerror}"
        if now != signature:
            return f"{path} changed while the warm parent started"
    try:
        if stat.S_IMODE(os.stat(cwd).st_mode) != key.cwd_mode:
            return f"the mode of {cwd} changed while the warm parent started"
    except OSError as exc:
        return f"cannot inspect {cwd}: {exc.strerror}"
    return None


def read_elsewhere(key: WarmKey, read: str | None) -> str | None:
    """Why `read`, the configuration file a parent for `key` read (None: none), is not one the key holds."""
    if read is None or os.path.realpath(read) in {os.path.realpath(path) for path, _ in key.configs}:
        return None
    return f"Ansible read its configuration from {read}, which is not where the worker looked"


def signature_of(info: os.stat_result) -> Signature:
    """What changes when a file is written, replaced or touched."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def read_at_start(name: str, reported: Collection[str]) -> bool:
    """Whether variable `name` may be read while Ansible is imported: then a warm parent would have to hold it.

    `reported` is what the parent said: the variables read during its import (`*` if it
    went through all of them) and those Ansible's configuration reads. Beyond it, what the
    interpreter and the C libraries read when a process starts.
    """
    return name in reported or "*" in reported or name in _READ_AT_START or name.startswith(_READ_AT_START_PREFIXES)


def _umask() -> str:
    # Reading the mask through os.umask would change it for a moment: /proc says it.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return line.split()[1]
    except OSError:
        pass
    return "?"


def _limits() -> list[tuple[int, int]]:
    return [resource.getrlimit(getattr(resource, name)) for name in sorted(dir(resource)) if name.startswith("RLIMIT_")]


def _content(path: Path) -> tuple[Signature | None, bytes]:
    """The signature of `path` (None: missing), then its content or what it is instead."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None, b"\x00missing"
    except OSError as exc:
        raise ColdStart(f"cannot inspect {path}: {exc.strerror}") from exc
    signature = signature_of(info)
    if not stat.S_ISREG(info.st_mode):
        return signature, f"\x00not a file {stat.S_IFMT(info.st_mode)}".encode()
    if info.st_size > MAX_CONFIG_BYTES:
        raise ColdStart(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return signature, path.read_bytes()
    except OSError as exc:
        raise ColdStart(f"cannot read {path}: {exc.strerror}") from exc
