"""Real OpenSSH servers for tests and benchmarks: each on a free loopback port, with its own host key and config.

They run as the test user with `sshd -D -e -f CONFIG`, and accept only the keys of their own
`authorized_keys`: no system service or file is touched.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from testing.ports import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshHost:
    """One sshd: where it listens and the line `known_hosts` needs for it."""

    name: str
    port: int
    known_hosts_line: str
    # Where the host keeps its files: its remote temporary directory is there.
    home: Path

    def inventory_line(self) -> str:
        """This host in an INI inventory, reached through its port on loopback."""
        # The "remote" Python is this one: interpreter discovery would find whatever the machine has.
        # The "remote" file system is this one too: the host's temporary files must not land where
        # the worker's own go (ANSIBLE_REMOTE_TEMP of its environment applies to every host).
        return (
            f"{self.name} ansible_host=127.0.0.1 ansible_port={self.port} ansible_user={getpass.getuser()}"
            f" ansible_python_interpreter={sys.executable} ansible_remote_tmp={self.home / 'remote-tmp'}"
        )


def make_key(path: Path, *, passphrase: str = "", comment: str = "ansible-worker test") -> str:
    """Write an Ed25519 key pair (`path`, `path.pub`); the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def _prepare(home: Path, name: str, authorized: list[str]) -> tuple[Path, SshHost]:
    """Write one server's host key, authorized_keys and config; its config file and host entry."""
    # sshd insists on its privilege separation directory, even when it runs as the user.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    home.mkdir(parents=True)
    host_key = home / "host_key"
    make_key(host_key, comment=name)
    (home / "authorized_keys").write_text("".join(f"{line}\n" for line in authorized))
    os.chmod(home / "authorized_keys", 0o600)
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {home / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "LogLevel ERROR\nMaxStartups 100\n"
    )
    key_type, key = Path(f"{host_key}.pub").read_text().split()[:2]
    return config, SshHost(name, port, f"[127.0.0.1]:{port} {key_type} {key}", home)


@asynccontextmanager
async def ssh_hosts(directory: Path, names: list[str], authorized: list[str]) -> AsyncIterator[list[SshHost]]:
    """Start one sshd per name, each accepting the public key lines `authorized`; stopped at the end."""
    hosts: list[SshHost] = []
    processes: list[trio.Process] = []
    try:
        for name in names:
            config, host = _prepare(directory / f"sshd-{name}", name, authorized)
            processes.append(
                await trio.lowlevel.open_process([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
            )
            hosts.append(host)
        for host in hosts:
            await _wait_listening(host.port)
        yield hosts
    finally:
        for process in processes:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def _wait_listening(port: int) -> None:
    with trio.fail_after(20):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return
