"""The `security` section's settings: which signed messages a worker requires, and the keys it reads for them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

from ansible_worker.ops.names import NAME_PATTERN

if TYPE_CHECKING:
    from ansible_worker.protocol.signing import Signer, TrustedKeys


# The name a worker's own public key goes by among the keys whose claims it trusts.
OWN_KEY_NAME = "worker_key"

# How old a signed message may be, and how far ahead of this clock: workers and controllers alike.
MaxTaskAge = Annotated[float, Field(gt=0, le=86_400)]
MaxClockSkew = Annotated[float, Field(ge=0, le=3600)]


class SecuritySettings(BaseModel):
    """Who may make the worker do what: signed messages, and the controller's own signing key."""

    model_config = ConfigDict(extra="forbid")

    require_signed_tasks: bool = False
    # The operator's name for each public key file; the name appears in logs as the signer.
    trusted_keys: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], Path] = Field(default_factory=dict)
    max_task_age: MaxTaskAge = 300
    max_clock_skew: MaxClockSkew = 60
    # For controllers (`ansible-worker submit`, `cancel`); a worker ignores it.
    signing_key: Path | None = None
    # A worker's own private key: with signed tasks it signs the worker's claims and
    # releases, which the group trusts by `worker_keys` (its own public key always).
    worker_key: Path | None = None
    worker_keys: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], Path] = Field(default_factory=dict)
    _trusted: TrustedKeys | None = PrivateAttr(None)
    _claim_signer: Signer | None = PrivateAttr(None)
    _claim_keys: TrustedKeys | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _load_trusted_keys(self) -> SecuritySettings:
        if self.require_signed_tasks and not self.trusted_keys:
            raise ValueError("require_signed_tasks is true, but trusted_keys names no key")
        from ansible_worker.protocol.signing import KeyFileError, Signer, TrustedKeys

        # Read here, before the event loop starts: file reads block.
        if self.trusted_keys:
            try:
                self._trusted = TrustedKeys.from_files(self.trusted_keys)
            except KeyFileError as exc:
                raise ValueError(f"trusted_keys: {exc}") from None
        if self.require_signed_tasks and self.worker_key is None:
            raise ValueError(
                "require_signed_tasks is true, but worker_key is not set: a worker signs its claims on jobs"
                " with a key of its own (make one with `ansible-worker keygen NAME`)"
            )
        if self.require_signed_tasks and self.worker_key is not None:
            try:
                self._claim_signer = Signer.from_file(self.worker_key)
            except KeyFileError as exc:
                raise ValueError(f"worker_key: {exc}") from None
            try:
                others = TrustedKeys.from_files(self.worker_keys)
            except KeyFileError as exc:
                raise ValueError(f"worker_keys: {exc}") from None
            if self._trusted is not None and self._claim_signer.fingerprint in self._trusted.fingerprints:
                raise ValueError("worker_key is also one of trusted_keys: a worker key must not be able to sign jobs")
            if self._trusted is not None and others.fingerprints & self._trusted.fingerprints:
                raise ValueError(
                    "worker_keys names a key that is also one of trusted_keys: a worker key must not be able"
                    " to sign jobs"
                )
            self._claim_keys = others.including(OWN_KEY_NAME, self._claim_signer.public_key)
        return self

    @property
    def trusted(self) -> TrustedKeys | None:
        """The loaded public keys, when signed messages are required."""
        return self._trusted if self.require_signed_tasks else None

    @property
    def claim_signing(self) -> tuple[Signer, TrustedKeys] | None:
        """This worker's claim signer and the keys whose claims count, when signed messages are required."""
        if self._claim_signer is None or self._claim_keys is None:
            return None
        return self._claim_signer, self._claim_keys


class ClientSecuritySettings(BaseModel):
    """The part of the `security` section a controller needs."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    signing_key: Path | None = None
    # The dashboard signs a request again only if it was this fresh when it heard it.
    max_task_age: MaxTaskAge = 300
    max_clock_skew: MaxClockSkew = 60
