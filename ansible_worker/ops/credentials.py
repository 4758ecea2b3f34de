"""The named credentials of `worker.credentials`: SSH keys, vault passwords and environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator, model_validator

# What a credential's value must be at least to be masked in what the worker publishes: a
# shorter one would turn every such letter of Ansible's output into stars.
MIN_SECRET_LENGTH = 4
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_VAULT_ID = r"^[A-Za-z0-9_.-]{1,64}$"


class _Credential(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Globs over the playbook path, as `allowed_playbooks`; None lets every playbook use it.
    allowed_playbooks: list[str] | None = None


class SshCredential(_Credential):
    """A private key for Ansible's SSH connections, loaded into a per-job ssh-agent."""

    type: Literal["ssh"]
    private_key_file: Path
    passphrase: SecretStr | None = None
    user: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}$")] | None = None

    @field_validator("private_key_file")
    @classmethod
    def _readable(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"not a file: {value}")
        return value.resolve()

    def key_bytes(self) -> bytes:
        """The private key as it is on disk now (read once per job, never copied to disk)."""
        return self.private_key_file.read_bytes()


class VaultCredential(_Credential):
    """A vault password, given to Ansible as `--vault-id ID@FILE` from the private run directory."""

    type: Literal["vault"]
    vault_id: Annotated[str, StringConstraints(pattern=_VAULT_ID)] = "default"
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> VaultCredential:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password and password_file")
        if self.password_file is not None:
            if not self.password_file.is_file():
                raise ValueError(f"password_file: not a file: {self.password_file}")
            if os.access(self.password_file, os.X_OK):
                # Ansible would run an executable password file; the worker only reads it.
                raise ValueError(
                    f"password_file: {self.password_file} is executable: the worker reads it as the"
                    " password, never runs it (give the password itself, or a plain file)"
                )
        return self

    def secret(self) -> str:
        """The password (a password file is read as text, its trailing newline dropped, never run)."""
        if self.password is not None:
            return self.password.get_secret_value()
        assert self.password_file is not None
        return self.password_file.read_text().rstrip("\n")


class EnvCredential(_Credential):
    """Environment variables (cloud tokens, API keys) for the job's processes only."""

    type: Literal["env"]
    variables: dict[Annotated[str, StringConstraints(pattern=_ENV_NAME)], SecretStr] = Field(min_length=1)

    @field_validator("variables")
    @classmethod
    def _not_reserved(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        reserved = sorted(name for name in value if name.startswith("ANSIBLE_WORKER_") or name == "SSH_AUTH_SOCK")
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: reserved for the worker itself")
        return value


Credential = Annotated[SshCredential | VaultCredential | EnvCredential, Field(discriminator="type")]
CredentialName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


def describe(name: str, credential: SshCredential | VaultCredential | EnvCredential) -> str:
    """A credential as `validate` shows it: its name, type and what it applies to, never a value."""
    match credential:
        case SshCredential(user=user):
            what = f"ssh key{f' for user {user}' if user else ''}"
        case VaultCredential(vault_id=vault_id):
            what = f"vault password for id {vault_id}"
        case EnvCredential(variables=variables):
            what = f"environment {', '.join(sorted(variables))}"
    scope = "any playbook" if credential.allowed_playbooks is None else ", ".join(credential.allowed_playbooks)
    return f"{name} ({what}; {scope})"
