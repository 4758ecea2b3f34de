"""Free loopback ports, and waiting until something listens on one."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (used soon after: the OS hands out another one first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, *, seconds: float = 10, failed: Callable[[], str | None] = lambda: None) -> None:
    """Until something accepts connections on 127.0.0.1:`port`.

    Errors: `RuntimeError` after `seconds`, or as soon as `failed()` says why the server never will.

    Synchronous: for launchers that start a server before any event loop runs.
    """
    deadline = time.monotonic() + seconds
    while True:
        reason = failed()
        if reason is not None:
            raise RuntimeError(reason)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:g}s") from None
            time.sleep(0.02)
