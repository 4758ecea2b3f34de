"""Give one run the credentials its job asked for, and take them away when it ends.

An SSH key goes into an `ssh-agent` of the run's own, through `ssh-add -` from a pipe: the key
is never a file of the run. A vault password is a 0600 file in the private run directory
(removed with it) that Ansible reads through `--vault-id ID@FILE`. Environment credentials go
into the run's environment only. The agent, and the SSH connections the run made (their
ControlPath is in the run's own socket directory), end with the run; carrying the run's
marker, they also end at the next start of a worker that was killed meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.ops.credentials import MIN_SECRET_LENGTH, EnvCredential, SshCredential, VaultCredential
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.process.stray_processes import kill_marked

log = logging.getLogger(__name__)

AnyCredential = SshCredential | VaultCredential | EnvCredential
# Starting the agent and loading a key are quick; past these bounds something is wrong.
AGENT_START_TIMEOUT = 10.0
ADD_KEY_TIMEOUT = 10.0
# Unix socket paths are limited to 108 bytes: the agent's and SSH's control sockets live in a
# short private directory of their own, beside the run directory.
SOCKET_DIRECTORY_PREFIX = "aw-"
# Answers once: asked again, the passphrase was wrong, and ssh-add must stop rather than retry.
_ASKPASS = '#!/bin/sh\n[ -e "$0.asked" ] && exit 1\n: > "$0.asked"\nprintf \'%s\\n\' "$ANSIBLE_WORKER_KEY_PASSPHRASE"\n'


def secret_values(credentials: Sequence[AnyCredential]) -> list[str]:
    """Every value of `credentials` that must never appear in what the worker publishes."""
    values: list[str] = []
    for credential in credentials:
        match credential:
            case SshCredential(passphrase=passphrase):
                if passphrase is not None:
                    values.append(passphrase.get_secret_value())
                try:
                    key = credential.key_bytes().decode("ascii", "replace")
                except OSError:
                    key = ""
                # A key is printed, if ever, as its text or one of its lines.
                values += [key.strip(), *(line for line in key.splitlines() if len(line) >= 16)]
            case VaultCredential():
                values.append(credential.secret())
            case EnvCredential(variables=variables):
                values += [value.get_secret_value() for value in variables.values()]
    return [value for value in values if len(value) >= MIN_SECRET_LENGTH]


# Ansible's own default for ssh_args, kept when host keys are checked against a file.
_DEFAULT_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s"


def strict_host_keys(known_hosts: Path, environment: Mapping[str, str]) -> dict[str, str]:
    """The variables that make every SSH connection check host keys against `known_hosts` only.

    An unknown or changed host key then fails the connection (the host is unreachable)
    instead of being learnt or trusted on first use.
    """
    ssh_args = environment.get("ANSIBLE_SSH_ARGS", _DEFAULT_SSH_ARGS)
    return {
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": f"{ssh_args} -o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes",
    }


@dataclass
class Injection:
    """What a run gets from its credentials: environment, extra arguments, and the secrets to mask.

    `own` names the variables of `env` that are the run's alone (a secret, its agent's
    socket): they go to the run's processes and nowhere else, never to a warm parent.
    """

    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    own: set[str] = field(default_factory=set)


@asynccontextmanager
async def inject(
    credentials: Sequence[AnyCredential],
    run_dir: Path,
    *,
    environment: Mapping[str, str],
    marker: tuple[str, str],
) -> AsyncIterator[Injection]:
    """Set up `credentials` for one run; everything is taken away when the block ends.

    `environment` is the run's environment (for `ssh-agent` and `ssh-add`), `marker` the
    variable that marks the run's processes. Errors: `JobRefusedError` when a key cannot be
    loaded or the agent does not start.

    Cancellation: the agent is killed and waited for (shielded) and its socket directory
    removed; the vault files go with the run directory.
    """
    injection = Injection(secrets=secret_values(credentials))
    if not credentials:
        yield injection
        return
    sockets = Path(tempfile.mkdtemp(prefix=SOCKET_DIRECTORY_PREFIX))
    try:
        # A setup error leaves as itself (JobRefusedError), not as a one-member group.
        with unwrap_lone_errors():
            async with trio.open_nursery() as nursery:
                for credential in credentials:
                    match credential:
                        case SshCredential():
                            if "SSH_AUTH_SOCK" not in injection.env:
                                injection.env.update(await _start_agent(nursery, sockets, environment, marker))
                                # Its own ControlPath: no other run can ride on this run's connections.
                                injection.env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(sockets)
                                injection.own.update(("SSH_AUTH_SOCK", "ANSIBLE_SSH_CONTROL_PATH_DIR"))
                            await _add_key(credential, run_dir, {**environment, **injection.env})
                            if credential.user is not None:
                                # A name, not a secret, and read when Ansible starts: it may choose a warm parent.
                                injection.env["ANSIBLE_REMOTE_USER"] = credential.user
                        case VaultCredential():
                            path = run_dir / f"vault-{credential.vault_id}"
                            _write_private(path, credential.secret().encode())
                            injection.argv += ["--vault-id", f"{credential.vault_id}@{path}"]
                        case EnvCredential(variables=variables):
                            injection.env.update({name: value.get_secret_value() for name, value in variables.items()})
                            injection.own.update(variables)
                try:
                    yield injection
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        # The agent is gone with the nursery; SSH masters that daemonized carry the marker.
        kill_marked(*marker)
        shutil.rmtree(sockets, ignore_errors=True)


async def _start_agent(
    nursery: trio.Nursery, sockets: Path, environment: Mapping[str, str], marker: tuple[str, str]
) -> dict[str, str]:
    """Start `ssh-agent -D` with its socket in `sockets`, owned by `nursery`; its variables once it listens."""
    socket_path = sockets / "agent.sock"
    env = {**environment, marker[0]: marker[1]}
    agent = shutil.which("ssh-agent", path=env.get("PATH", os.defpath))
    if agent is None:
        raise JobRefusedError("cannot start ssh-agent: it is not installed (openssh-client)")
    await nursery.start(_serve_agent, [agent, "-D", "-a", str(socket_path)], env)
    return {"SSH_AUTH_SOCK": str(socket_path)}


async def _serve_agent(
    argv: list[str], env: dict[str, str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the agent until cancelled; started once it says where it listens (it binds first)."""
    process = await trio.lowlevel.open_process(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert process.stdout is not None
    try:
        said = b""
        with trio.move_on_after(AGENT_START_TIMEOUT):
            while b"SSH_AUTH_SOCK" not in said:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                said += chunk
        if b"SSH_AUTH_SOCK" not in said:
            raise JobRefusedError(f"ssh-agent did not start: {said.decode(errors='replace').strip() or 'no answer'}")
        task_status.started()
        await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            # The agent holds keys in memory only: nothing of it survives SIGKILL.
            process.kill()
            await process.wait()
            await process.stdout.aclose()


async def _add_key(credential: SshCredential, run_dir: Path, env: Mapping[str, str]) -> None:
    """Load the key into the agent through a pipe; a passphrase comes through SSH_ASKPASS, never a tty."""
    askpass = run_dir / "askpass"
    if not askpass.exists():
        # The script holds no secret: the passphrase is in ssh-add's environment only.
        _write_private(askpass, _ASKPASS.encode(), mode=0o700)
    # Asked at most once per key: the marker says the passphrase was asked for.
    asked = f"{askpass}.asked"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(asked)
    passphrase = credential.passphrase.get_secret_value() if credential.passphrase is not None else ""
    ssh_add = shutil.which("ssh-add", path=env.get("PATH", os.defpath))
    if ssh_add is None:
        raise JobRefusedError("cannot load an SSH key: ssh-add is not installed (openssh-client)")
    try:
        key = credential.key_bytes()
    except OSError as exc:
        raise JobRefusedError(f"cannot read the SSH key {credential.private_key_file}: {exc.strerror}") from None
    added_env = {
        **env,
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "ANSIBLE_WORKER_KEY_PASSPHRASE": passphrase,
        "DISPLAY": env.get("DISPLAY", ":0"),
    }
    with trio.move_on_after(ADD_KEY_TIMEOUT) as bound:
        result = await trio.run_process(
            [ssh_add, "-q", "-"],
            stdin=key,
            env=added_env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            start_new_session=True,
        )
    if bound.cancelled_caught:
        raise JobRefusedError(f"ssh-add did not load the key within {ADD_KEY_TIMEOUT:g}s")
    if result.returncode != 0:
        why = result.stderr.decode(errors="replace").strip().splitlines()
        if _was_asked(asked):
            raise JobRefusedError(
                f"cannot load the SSH key {credential.private_key_file.name}: wrong or missing passphrase"
            )
        raise JobRefusedError(
            f"cannot load the SSH key {credential.private_key_file.name}: {why[-1] if why else 'ssh-add failed'}"
        )


def _was_asked(marker: str) -> bool:
    """Whether the askpass script was run (a local file's existence: no need to leave the loop)."""
    return os.path.exists(marker)


def _write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write a new file that is private from its first byte (O_EXCL: never through a planted link)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
