"""What a link is made of and what it raises, without the transport: cheap to import for settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message the broker delivered; `expiry` is what is left of its message expiry, if any."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry: int | None = None
