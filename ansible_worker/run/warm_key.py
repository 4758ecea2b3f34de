"""Decide whether a job may start warm, and from which parent: the key of everything Ansible reads at import.

Ansible builds its configuration once, when `ansible.constants` is imported: from the
`ansible.cfg` it finds (`ANSIBLE_CONFIG`, the working directory, `~/.ansible.cfg`,
`/etc/ansible/ansible.cfg`) and from `ANSIBLE_*` variables. A warm parent is only valid
for the exact inputs it imported with, so the key holds all of them: the interpreter and
the script, the working directory, every candidate configuration file (path, and content
or absence), and the whole environment but the variables that a run reads late. Anything
that cannot be checked gives a reason instead of a key, which means a cold start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

MAX_CONFIG_BYTES = 1_048_576
_SCRIPT_MARKER = b"from ansible.cli.playbook import main"
_SHEBANG_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Interpreter:
    """How to start a warm parent for one `ansible-playbook` script: `command` + our script."""

    command: tuple[str, ...]
    script: str


class ColdStart(Exception):
    """Why a job starts cold; the message is the reason logged."""


def find_interpreter(script: str, env: Mapping[str, str]) -> Interpreter:
    """The Python that runs `script` (from its shebang), if it is Ansible's standard playbook script.

    Errors: `ColdStart` when the script is not a Python script that only calls
    `ansible.cli.playbook.main` (a wrapper, a binary, something unknown).
    """
    try:
        with open(script, "rb") as handle:
            head = handle.read(_SHEBANG_LIMIT)
    except OSError as exc:
        raise ColdStart(f"cannot read {script}: {exc.strerror}") from exc
    if not head.startswith(b"#!"):
        raise ColdStart(f"{script} has no #! line")
    if _SCRIPT_MARKER not in head:
        raise ColdStart(f"{script} is not the standard ansible-playbook script")
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        raise ColdStart(f"{script} has an empty #! line")
    if os.path.basename(words[0]) == "env" and len(words) >= 2:
        found = shutil.which(words[1], path=env.get("PATH", os.defpath))
        if found is None:
            raise ColdStart(f"{script}: {words[1]} not found on PATH")
        words = [found, *words[2:]]
    if "python" not in os.path.basename(words[0]):
        raise ColdStart(f"{script} is not run by Python ({words[0]})")
    return Interpreter(tuple(words), os.path.abspath(script))


def config_candidates(cwd: Path, env: Mapping[str, str]) -> list[Path]:
    """Where Ansible looks for `ansible.cfg`, in its order (each may be missing)."""
    candidates: list[Path] = []
    from_env = env.get("ANSIBLE_CONFIG")
    if from_env is not None:
        path = Path(os.path.expanduser(os.path.expandvars(from_env)))
        if not path.is_absolute():
            path = cwd / path
        candidates.append(path / "ansible.cfg" if path.is_dir() else path)
    candidates.append(cwd / "ansible.cfg")
    home = env.get("HOME")
    if home:
        candidates.append(Path(home) / ".ansible.cfg")
    candidates.append(Path("/etc/ansible/ansible.cfg"))
    return candidates


def warm_key(interpreter: Interpreter, *, cwd: Path, env: Mapping[str, str], late: Collection[str]) -> str:
    """A digest of every input Ansible reads at import, for a job run in `cwd` with `env`.

    `late` names variables read only while the playbook runs (the event FIFO): they are
    per job and passed to the child, so they are not part of the key.

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
    add("cwd", cwd, stat.S_IMODE(directory.st_mode))
    for candidate in config_candidates(cwd, env):
        add("config", candidate, _content(candidate))
    add("env")
    for name in sorted(env):
        if name not in late:
            add(name, env[name])
    return digest.hexdigest()


def _content(path: Path) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        return b"\x00missing"
    except OSError as exc:
        raise ColdStart(f"cannot inspect {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        return f"\x00not a file {stat.S_IFMT(info.st_mode)}".encode()
    if info.st_size > MAX_CONFIG_BYTES:
        raise ColdStart(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ColdStart(f"cannot read {path}: {exc.strerror}") from exc
