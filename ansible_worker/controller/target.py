"""Where a controller finds the workers: a broker connection and the group's topics, as one frozen value."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ansible_worker.controller.errors import ClientError, SigningKeyError
from ansible_worker.mqtt.options import LinkOptions, link_from_url
from ansible_worker.protocol.topics import Topics

if TYPE_CHECKING:
    # Only for its type: the controller never loads pydantic-settings itself.
    from ansible_worker.ops.config import ClientSettings
    from ansible_worker.protocol.signing import Signer


@dataclass(frozen=True, slots=True)
class Target:
    """Where the workers are: a broker connection and the group's topics.

    With a `signer`, jobs and cancel requests are signed (for workers that require it). With
    `history` (a database URL), finished jobs are read from that store (`ansible_worker.history`).
    """

    link: LinkOptions
    topics: Topics
    signer: Signer | None = None
    history: str | None = None


def target_from_url(url: str, *, group: str, prefix: str = "ansible", ca_cert: Path | None = None) -> Target:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://…` (TLS, port 8883 by default)."""
    try:
        link = link_from_url(url, client_id=new_client_id(), ca_cert=ca_cert)
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    return Target(link, Topics(prefix, group))


def target_from_settings(settings: ClientSettings) -> Target:
    """The broker and group of a config file, and its `security.signing_key` if it names one.

    Errors: `ClientError` when the signing key cannot be read.
    """
    # Never the workers' own client_id from their file: the broker would drop one of us.
    link = settings.mqtt.link_options(client_id=new_client_id())
    signing_key = settings.security.signing_key
    signer = load_signer(signing_key) if signing_key is not None else None
    topics = Topics(settings.worker.topic_prefix, settings.worker.group_name)
    return Target(link, topics, signer, history=settings.history.url)


def load_signer(path: Path) -> Signer:
    """A signer for the private key in `path`. Errors: `ClientError` saying why it cannot be used."""
    from ansible_worker.protocol.signing import KeyFileError, Signer

    try:
        return Signer.from_file(path)
    except KeyFileError as exc:
        raise SigningKeyError(f"signing key: {exc}") from None


def new_client_id() -> str:
    """A client id of its own: the broker disconnects the older of two connections that share one."""
    return f"ansible-worker-client-{uuid.uuid4().hex[:12]}"
