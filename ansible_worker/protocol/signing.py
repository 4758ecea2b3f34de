"""Ed25519 signatures on task and cancel messages: key files, the signed bytes, signing and checking.

A signed message is the usual JSON object plus two fields::

    {"task_id": "deploy-42", "playbook": "site.yml", "inventory": "hosts",
     "issued_at": "2026-11-23T05:00:00Z",
     "signature": {"key": "<fingerprint>", "value": "<base64 Ed25519 signature>"}}

The signature covers `ansible-worker-v1`, a newline, the topic the message is published
on, a newline, and the RFC 8785 canonical JSON of the object without `signature`. Binding
the topic means a job signed for one group cannot run in another, and a signed job cannot
be replayed as a cancel request (or the other way round). `key` is the SHA-256 fingerprint
of the raw public key (first 16 bytes, hex): a hint that names the key in error messages.

RFC 8785 writes each number one way, so texts that decode to different values can share one
canonical form (`2` and `2.0`, `0` and `-0.0`), and Ansible tells those values apart. So a
verified message is acted on as its signature covers it: `Verified.document` holds the
values decoded from the canonical form, whatever text arrived. `Signer.sign` returns its
body in that form too, so that what a controller sends is what it signed.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ansible_worker.protocol.timestamps import format_utc, parse_utc

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# cryptography and rfc8785 are imported where they are used: a worker that checks no
# signatures never loads them (cryptography alone is about 7 MB of resident memory).

__all__ = [
    "ISSUED_AT_FIELD",
    "SIGNATURE_FIELD",
    "KeyFileError",
    "SignatureRefused",
    "Signer",
    "TrustedKeys",
    "UntrustedKey",
    "Verified",
    "canonical_json",
    "check_age",
    "fingerprint",
    "generate_key_pair",
    "issued_at",
    "load_private_key",
    "load_public_key",
    "signed_bytes",
]

SIGNATURE_FIELD = "signature"
ISSUED_AT_FIELD = "issued_at"
_CONTEXT = b"ansible-worker-v1\n"


class KeyFileError(Exception):
    """A key file cannot be used; the message says why, never what the key is."""


class SignatureRefused(Exception):
    """A message's signature or age is not acceptable; the message says why in plain words."""


class UntrustedKey(SignatureRefused):
    """A message names a signing key this side does not know; `fingerprint` is that name (at most 64 characters)."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__(f"signed with a key this worker does not trust (fingerprint {fingerprint})")
        self.fingerprint = fingerprint


def canonical_json(body: Mapping[str, Any]) -> bytes:
    """The RFC 8785 canonical JSON of `body` without its signature.

    Errors: `SignatureRefused` when the body has no canonical form (a float that is not
    finite, an integer of 2**53 or beyond, a string that is not Unicode text, nesting too deep).
    """
    import rfc8785

    unsigned = {key: value for key, value in body.items() if key != SIGNATURE_FIELD}
    try:
        return rfc8785.dumps(unsigned)
    except rfc8785.CanonicalizationError as exc:
        raise SignatureRefused(f"the message has no canonical JSON form (RFC 8785): {exc}") from None
    except RecursionError:
        raise SignatureRefused("the message has no canonical JSON form (RFC 8785): nested too deeply") from None


def signed_bytes(topic: str, body: Mapping[str, Any]) -> bytes:
    """What a signature covers: the context, the topic and the canonical body without its signature.

    Errors: as `canonical_json`.
    """
    return _framed(topic, canonical_json(body))


def _framed(topic: str, canonical: bytes) -> bytes:
    return _CONTEXT + topic.encode() + b"\n" + canonical


def _values(canonical: bytes) -> dict[str, Any]:
    """The values a canonical JSON object stands for. Errors: `SignatureRefused` for nesting too deep."""
    try:
        values: dict[str, Any] = json.loads(canonical)
    except RecursionError:
        raise SignatureRefused("the message has no canonical JSON form (RFC 8785): nested too deeply") from None
    return values


def fingerprint(key: Ed25519PublicKey) -> str:
    """The short name of a public key in signatures: the first 32 hex digits of the SHA-256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or an OpenSSH `ssh-ed25519 …` line."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_file(path)
    try:
        if data.lstrip().startswith(b"ssh-"):
            key: object = serialization.load_ssh_public_key(data)
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM or OpenSSH public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 key (a {type(key).__name__.removeprefix('_')})")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from a PEM (PKCS#8) or OpenSSH private key file."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path)
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key: object = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The library's message never contains key material.
        raise KeyFileError(f"{path}: not an unencrypted PEM or OpenSSH private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair: the private key readable by its owner only. Returns the fingerprint.

    Errors: `FileExistsError` if either file exists (a key is never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(errno.EEXIST, "exists already; a key is never overwritten", str(path))
    # O_EXCL: never overwrite, and the mode is set at creation, before any byte is written.
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as private_file:
        private_file.write(private_pem)
    public_path.write_bytes(public_pem)
    return fingerprint(key.public_key())


class Signer:
    """Signs messages with one private key (a controller's)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.fingerprint = fingerprint(self.public_key)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """A signer for the private key in `path`. Errors: as `load_private_key`."""
        return cls(load_private_key(path))

    def sign(self, topic: str, body: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
        """`body` as its signature covers it, with `issued_at` set to now and a `signature` for `topic`.

        The result holds each value as the signature covers it (`2.0` becomes `2`, the one
        form RFC 8785 gives it), so that a worker runs what the sender sees it send.
        Errors: as `canonical_json`; also for a whole float from 2**53 up.
        """
        unsigned = {key: value for key, value in body.items() if key != SIGNATURE_FIELD}
        unsigned[ISSUED_AT_FIELD] = format_utc(now or datetime.now(UTC), timespec="milliseconds")
        canonical = canonical_json(unsigned)
        signed = _values(canonical)
        # A whole float from 2**53 up is written as an integer that has no canonical form.
        canonical_json(signed)
        value = self._key.sign(_framed(topic, canonical))
        signed[SIGNATURE_FIELD] = {"key": self.fingerprint, "value": base64.b64encode(value).decode()}
        return signed


@dataclass(frozen=True, slots=True)
class Verified:
    """Who signed a message (the worker's name for the key), when they say they did, and what they signed.

    `document` is the message as its signature covers it: each value decoded from the
    canonical form (so `2` where `2.0` arrived), and the signature. Act on it, not on the
    message as it arrived.
    """

    signer: str
    issued_at: datetime
    document: dict[str, Any]

    def payload(self) -> bytes:
        """`document` as compact UTF-8 JSON: the message to keep, or publish again, as it was signed."""
        return json.dumps(self.document, ensure_ascii=False, separators=(",", ":")).encode()


class TrustedKeys:
    """The public keys a worker accepts signatures from, each under the operator's name for it."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._by_fingerprint = {fingerprint(key): (name, key) for name, key in keys.items()}
        self.names = sorted(keys)

    @classmethod
    def from_files(cls, files: Mapping[str, Path]) -> TrustedKeys:
        """The public keys in `files`, each under its name. Errors: as `load_public_key`."""
        return cls({name: load_public_key(path) for name, path in files.items()})

    @property
    def fingerprints(self) -> frozenset[str]:
        """The fingerprints of every trusted key."""
        return frozenset(self._by_fingerprint)

    def including(self, name: str, key: Ed25519PublicKey) -> TrustedKeys:
        """These keys and `key` under `name` (a key already here keeps its own name)."""
        keys = {name: key for name, key in self._by_fingerprint.values()}
        if fingerprint(key) not in self._by_fingerprint:
            while name in keys:
                name += "'"
            keys[name] = key
        return TrustedKeys(keys)

    def check_key(self, document: Mapping[str, Any]) -> None:
        """The cheap part of `verify`: a well-formed signature by a key this worker knows.

        Errors: `SignatureRefused`, as `verify`.
        """
        signature = document.get(SIGNATURE_FIELD)
        if signature is None:
            raise SignatureRefused("unsigned: this worker requires signed messages (security.require_signed_tasks)")
        if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
            raise SignatureRefused('malformed signature: expected {"key": FINGERPRINT, "value": BASE64}')
        hint = signature.get("key")
        if isinstance(hint, str) and hint not in self._by_fingerprint:
            raise UntrustedKey(hint[:64])

    def verify(self, topic: str, document: Mapping[str, Any]) -> Verified:
        """Check the signature of a message received on `topic`; its age is `check_age`'s business.

        Errors: `SignatureRefused` saying what is wrong: unsigned, malformed, an untrusted
        key (`UntrustedKey`), a signature that does not match, no usable `issued_at`, or
        values with no canonical form once decoded as signed (a whole float from 2**53 up),
        which `Signer.sign` refuses too.
        """
        self.check_key(document)
        signature = document[SIGNATURE_FIELD]
        try:
            value = base64.b64decode(signature["value"], validate=True)
        except (binascii.Error, ValueError):
            raise SignatureRefused("malformed signature: value is not base64") from None
        hint = signature.get("key")
        candidates = [self._by_fingerprint[hint]] if isinstance(hint, str) else list(self._by_fingerprint.values())
        from cryptography.exceptions import InvalidSignature

        canonical = canonical_json(document)
        message = _framed(topic, canonical)
        for name, key in candidates:
            try:
                key.verify(value, message)
            except InvalidSignature:
                continue
            signed = _values(canonical)
            # As `Signer.sign` does: a whole float from 2**53 up is written as an integer that
            # has no canonical form, so the job as signed could be kept, but never handed on.
            canonical_json(signed)
            # Only what names and makes the signature: nothing rides along outside what is signed.
            signed[SIGNATURE_FIELD] = (
                {"key": hint, "value": signature["value"]} if isinstance(hint, str) else {"value": signature["value"]}
            )
            return Verified(name, issued_at(document), signed)
        if isinstance(hint, str):
            raise SignatureRefused(f"bad signature: it does not match the message (key {candidates[0][0]!r})")
        raise SignatureRefused("bad signature: no trusted key made it")


def issued_at(document: Mapping[str, Any]) -> datetime:
    """The `issued_at` of a signed message.

    Errors: `SignatureRefused` when it is missing or not an RFC 3339 time with a zone.
    """
    text = document.get(ISSUED_AT_FIELD)
    if not isinstance(text, str):
        raise SignatureRefused(f"{ISSUED_AT_FIELD} is missing: a signed message must say when it was issued")
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise SignatureRefused(f"{ISSUED_AT_FIELD} is not an RFC 3339 time: {text[:64]!r}") from None
    try:
        return parse_utc(text)
    except ValueError:
        raise SignatureRefused(f"{ISSUED_AT_FIELD} has no time zone: {text[:64]!r}") from None


def check_age(issued_at: datetime, *, now: datetime, max_age: float, max_skew: float) -> None:
    """Refuse a message issued more than `max_age` seconds ago, or more than `max_skew` ahead."""
    age = (now - issued_at).total_seconds()
    if age > max_age:
        raise SignatureRefused(f"expired: issued {age:.0f}s ago, more than security.max_task_age ({max_age:g}s)")
    if -age > max_skew:
        raise SignatureRefused(
            f"issued {-age:.0f}s in the future, more than security.max_clock_skew ({max_skew:g}s): check the clocks"
        )
