"""The rules of credentials and masking, without a broker: who gets a credential, and what masking catches."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from pydantic import ValidationError

from ansible_worker.ops.credentials import EnvCredential, VaultCredential
from ansible_worker.run.argv import child_environment
from ansible_worker.run.masking import MASK, TRUNCATED, Masker
from ansible_worker.run.policy import credential_error

SECRET = "s3cr3t-'quote\"-value"


def restricted() -> dict[str, EnvCredential | VaultCredential]:
    return {"prod": EnvCredential(type="env", variables={"TOKEN": "t0ken-value"}, allowed_playbooks=["deploy/*.yml"])}


def test_a_restricted_credential_is_for_its_playbooks_only_and_never_for_other_trees() -> None:
    assert credential_error(["prod"], "deploy/site.yml", restricted()) is None
    assert (
        credential_error(["prod"], "evil.yml", restricted())
        == "credential 'prod' may not be used by playbook 'evil.yml'"
    )
    refused = credential_error(["prod"], "deploy/site.yml", restricted(), own_tree=False)
    assert refused is not None
    assert "not for shipped content, a project or a revision" in refused
    assert (
        credential_error(["nope"], "deploy/site.yml", restricted()) == "credential 'nope' is not defined on this worker"
    )


def test_a_vault_password_file_that_is_executable_is_a_config_error(tmp_path: Path) -> None:
    script = tmp_path / "vault-pass.sh"
    script.write_text("#!/bin/sh\necho pw\n")
    os.chmod(script, 0o700)
    with pytest.raises(ValidationError, match="is executable: the worker reads it as the password"):
        VaultCredential(type="vault", password_file=script)


def test_the_workers_own_agent_is_not_lent_to_jobs() -> None:
    env = child_environment({"SSH_AUTH_SOCK": "/run/user/0/agent", "PATH": "/bin"})
    assert "SSH_AUTH_SOCK" not in env
    assert child_environment({}, extra={"SSH_AUTH_SOCK": "/set/on/purpose"})["SSH_AUTH_SOCK"] == "/set/on/purpose"


@pytest.mark.parametrize(
    "printed",
    [SECRET, json.dumps(SECRET), repr(SECRET), shlex.quote(SECRET), f"prefix {SECRET} suffix"],
)
def test_every_quoted_form_is_masked(printed: str) -> None:
    masked = Masker([SECRET]).text(printed)
    assert MASK in masked
    assert "s3cr3t" not in masked


def test_numbers_that_are_secrets_are_masked() -> None:
    masker = Masker(["20261202", "3.5"])
    assert masker.tree({"pin": 20261202, "ratio": 3.5, "other": 7, "flag": True}) == {
        "pin": MASK,
        "ratio": MASK,
        "other": 7,
        "flag": True,
    }


def test_a_secret_cut_by_truncation_or_at_the_start_of_a_window_is_masked() -> None:
    masker = Masker(["tok-3f9a1c77e2b04d51"])
    cut = "x" * 40 + "tok-3f9a" + TRUNCATED
    assert masker.text(cut) == "x" * 40 + MASK + TRUNCATED
    window = "1c77e2b04d51 was the token"
    assert masker.window(window) == MASK + " was the token"
    assert masker.window("nothing here") == "nothing here"
