"""Who may use the dashboard: the listen address, its token, and the checks on every request."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

TOKEN_HEADER = "x-dashboard-token"  # noqa: S105 (a header name, not a secret)
# A header a cross-site form or image cannot send: a browser sends it only from our own script.
ACTION_HEADER = "x-dashboard-action"


class AccessError(Exception):
    """The dashboard cannot start with these listen and token settings; the message says why."""


@dataclass(frozen=True, slots=True)
class Listen:
    """A HOST:PORT to listen on."""

    host: str
    port: int

    @property
    def bind(self) -> str:
        """The address in hypercorn's bind syntax."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """`HOST:PORT` (`[::1]:8470` for IPv6). Errors: `AccessError` naming what is wrong."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise AccessError(f"dashboard listen address {text!r} must be HOST:PORT, e.g. 127.0.0.1:8470")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AccessError(f"dashboard listen address {text!r}: port must be a number from 0 to 65535")
    return Listen(host, int(port_text))


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses only: nobody else on the network can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(listen: Listen, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token. Errors: `AccessError` saying what to do."""
    if token is not None and len(token) < 16:
        raise AccessError("dashboard token (--token or dashboard.token) must be at least 16 characters long")
    if token is None and not is_loopback(listen.host):
        raise AccessError(
            f"dashboard listen address {listen.host}:{listen.port} is reachable from other machines:"
            " give a token with --token or dashboard.token in the config (or listen on 127.0.0.1)"
        )


def token_ok(expected: str | None, given: str | None) -> bool:
    """Whether `given` is the token (always true without one), compared in constant time."""
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's Origin (if the browser sent one) names the host it was sent to."""
    if origin is None:
        return True
    if host is None:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
