"""A real Mosquitto on a loopback port, that a test or a benchmark can stop and start again on the same port."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from testing.ports import free_port, wait_listening

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """A Mosquitto process; its configuration, and its log (stderr, which it writes reliably), in `directory`."""

    def __init__(
        self,
        directory: Path,
        listener_options: str = "",
        *,
        access: str = "allow_anonymous true\n",
        render: Callable[[int], str] | None = None,
        port: int | None = None,
        persistence: Path | None = None,
    ) -> None:
        """A broker on `port` (a free one by default); `render(port)`, if given, writes the whole configuration.

        With `persistence` (a directory), retained messages and sessions outlive a restart.
        """
        self.port = port or free_port()
        self.directory = directory
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        text = (
            render(self.port)
            if render is not None
            else (
                f"listener {self.port} 127.0.0.1\n"
                + listener_options
                + access
                + _persistence(persistence)
                + "set_tcp_nodelay true\n"
                "log_dest stderr\n"
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            )
        )
        # Started as root, Mosquitto would drop to a user that cannot read this directory.
        self.config.write_text(text + ("user root\n" if os.geteuid() == 0 else ""))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and return once it accepts connections (at most 10 s)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        wait_listening(self.port, failed=self._exited)

    def _exited(self) -> str | None:
        if self.process is None or self.process.poll() is None:
            return None
        return f"mosquitto exited: {self.log.read_text()[-2000:]}"

    def stop(self, *, timeout: float = 10) -> None:
        """SIGTERM (a persistent broker writes its database first), and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=timeout)
        self.process = None


def _persistence(directory: Path | None) -> str:
    if directory is None:
        return "persistence false\n"
    directory.mkdir(exist_ok=True)
    return f"persistence true\npersistence_location {directory}/\n"
