"""What a link is made of and what it raises, without the transport: cheap to import for settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit


class LinkError(Exception):
    """Base class of the link's errors."""


class ConnectFailed(LinkError):
    """The broker could not be reached, or refused the connection."""


class LinkLost(LinkError):
    """The connection dropped, or an operation on it timed out."""


class SubscribeRefused(LinkError):
    """The broker answered a SUBSCRIBE with a failure reason code."""


class PublishRefused(LinkError):
    """The broker answered a QoS 1 PUBLISH with a failure reason code (its ACL, usually).

    Publishing the same message again would be refused again: the link itself is fine.
    """


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a client whose connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    # Its message expiry interval, in seconds: a reader of the retained will is told what is left of it.
    expiry: int | None = None


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """Everything needed to open one connection. Secrets arrive here as plain strings."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    # Kept out of repr(), so that no log line or traceback can show it.
    password: str | None = field(default=None, repr=False)
    keepalive: int = 60
    tls_enabled: bool = False
    tls_ca_cert: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    will: Will | None = None


def link_from_url(url: str, *, client_id: str, ca_cert: Path | None = None) -> LinkOptions:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://…` (TLS, port 8883 by default).

    Errors: `ValueError` saying what is wrong with `url`.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, not {url.split('://')[0]!r}")
    if not parts.hostname:
        raise ValueError(f"broker URL has no host: {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ValueError(f"broker URL has an invalid port: {exc}") from None
    return LinkOptions(
        host=parts.hostname,
        port=port,
        client_id=client_id,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls_enabled=tls,
        tls_ca_cert=ca_cert,
    )


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message the broker delivered; `expiry` is what is left of its message expiry, if any."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry: int | None = None
