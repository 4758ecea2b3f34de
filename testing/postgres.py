"""A throwaway PostgreSQL cluster on a loopback port for tests and benchmarks, run by a user of its own.

Debian's `postgresql` package puts the programs under /usr/lib/postgresql/<version>/bin. The
server refuses to run as root, so under root the cluster's directory is handed to the
`postgres` system user (the package makes it) and the server runs as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from testing.ports import free_port, wait_listening

SUPERUSER = "history"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    return Path(found[-1]).parent if found else None


def postgres_available() -> bool:
    """Whether initdb and postgres are installed."""
    return postgres_bin() is not None


class Postgres:
    """A cluster trusting local connections, listening on 127.0.0.1 only.

    Its files go to `directory`, else to a new temporary directory (removed by `remove`): under
    root, one the server's user can reach, which a pytest temporary directory is not.
    """

    def __init__(self, directory: Path | None = None, *, port: int | None = None) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed")
        self.bin = bin_dir
        self.port = port or free_port()
        self._own_directory = directory is None
        self.directory = directory if directory is not None else Path(tempfile.mkdtemp(prefix="history-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._user = _unprivileged_user()

    @property
    def _uid(self) -> int | None:
        return None if self._user is None else pwd.getpwnam(self._user).pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self._user is None else pwd.getpwnam(self._user).pw_gid

    @property
    def _groups(self) -> list[int] | None:
        # Root's supplementary groups must not follow the server.
        return None if self._user is None else []

    def start(self) -> None:
        """initdb on the first start; then run the server and return once it accepts connections."""
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        if not self.data.exists():
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"],
                check=True,
                capture_output=True,
                cwd=self.directory,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
        with self.log.open("ab") as log:
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                os.chown(self.log, entry.pw_uid, entry.pw_gid)
            self.process = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.directory),
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=log,
                cwd=self.directory,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
        wait_listening(self.port, failed=self._exited)

    def _exited(self) -> str | None:
        if self.process is None or self.process.poll() is None:
            return None
        return f"postgres exited: {self.log.read_text()[-2000:]}"

    def url(self, database: str = "postgres") -> str:
        """The URL of `database` on this server, as `history.url` takes it."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        name = "h_" + uuid.uuid4().hex[:12]
        command = [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name]
        deadline = time.monotonic() + 30
        while True:
            # Listening comes a moment before accepting: "the database system is starting up".
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return self.url(name)
            if "starting up" not in done.stderr or time.monotonic() > deadline:
                raise RuntimeError(f"createdb failed: {done.stderr.strip()}")
            time.sleep(0.1)

    def stop(self, *, timeout: float = 20) -> None:
        """A fast shutdown (SIGINT), and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            self.process.wait(timeout=timeout)
        self.process = None

    def remove(self) -> None:
        """Stop it, and remove its files if it made their directory."""
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _unprivileged_user() -> str | None:
    """Who runs the server: this user, unless it is root; then `postgres`, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


__all__ = ["Postgres", "postgres_available", "postgres_bin"]
