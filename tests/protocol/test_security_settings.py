"""Security settings on their own: key files, config mistakes named by key, `validate`, `keygen`, children's environment."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ansible_worker.ops.config import ConfigError, load_settings
from ansible_worker.protocol.signing import (
    Signer,
    TrustedKeys,
    generate_key_pair,
    load_public_key,
)
from ansible_worker.run.argv import child_environment


def test_key_files_that_are_not_ed25519_are_named(tmp_path: Path, keys: dict[str, Path]) -> None:
    not_a_key = tmp_path / "notes.pub"
    not_a_key.write_text("hello")
    with pytest.raises(Exception, match=r"notes.pub: not a PEM or OpenSSH public key"):
        load_public_key(not_a_key)
    openssh = tmp_path / "alice_ssh.pub"
    key = load_public_key(keys["alice"].with_suffix(".pub"))
    from cryptography.hazmat.primitives import serialization

    openssh.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    assert load_public_key(openssh) == key


def write_config(path: Path, playbooks: Path, security: dict[str, Any], **worker: Any) -> Path:
    path.write_text(
        json.dumps(
            {
                "mqtt": {"host": "127.0.0.1", "password": "hunter2-broker"},
                "worker": {"group_name": "g", "playbook_directory": str(playbooks), **worker},
                "security": security,
            }
        )
    )
    return path


def test_security_config_mistakes_name_the_key(tmp_path: Path, keys: dict[str, Path]) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"require_signed_tasks": True}, "security: require_signed_tasks is true, but trusted_keys names no key"),
        (
            {"require_signed_tasks": True, "trusted_keys": {"bob": str(tmp_path / "missing.pub")}},
            f"security: trusted_keys: {tmp_path / 'missing.pub'}: cannot read: No such file or directory",
        ),
        (
            {"require_signed_tasks": True, "trusted_keys": {"alice": str(keys["alice"].with_suffix(".key"))}},
            "security: trusted_keys: ",
        ),
        (
            {"require_signed_tasks": True, "trusted_keys": {"alice": str(keys["alice"].with_suffix(".pub"))}},
            "security: require_signed_tasks is true, but worker_key is not set: a worker signs its claims",
        ),
        (
            {
                "require_signed_tasks": True,
                "trusted_keys": {"alice": str(keys["alice"].with_suffix(".pub"))},
                "worker_key": str(keys["alice"].with_suffix(".key")),
            },
            "security: worker_key is also one of trusted_keys: a worker key must not be able to sign jobs",
        ),
        (
            {
                "require_signed_tasks": True,
                "trusted_keys": {"alice": str(keys["alice"].with_suffix(".pub"))},
                "worker_key": str(keys["mallory"].with_suffix(".pub")),
            },
            "security: worker_key: ",
        ),
        (
            {
                "require_signed_tasks": True,
                "trusted_keys": {"alice": str(keys["alice"].with_suffix(".pub"))},
                "worker_key": str(keys["mallory"].with_suffix(".key")),
                "worker_keys": {"east": str(keys["alice"].with_suffix(".pub"))},
            },
            "security: worker_keys names a key that is also one of trusted_keys",
        ),
        ({"max_task_age": 0}, "security.max_task_age: Input should be greater than 0 (got 0)"),
        ({"trusted_keys": {"bad name": "x"}}, "security.trusted_keys.bad name.[key]: String should match pattern"),
    ]
    for security, expected in cases:
        with pytest.raises(ConfigError) as caught:
            load_settings(write_config(tmp_path / "c.json", tmp_path, security), environ={})
        assert caught.value.problems[0].startswith(expected), caught.value.problems
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path / "c.json", tmp_path, {}, environment={"ANSIBLE_WORKER_X": "1"}), {})
    assert caught.value.problems == ["worker.environment: ANSIBLE_WORKER_X: reserved for the worker itself"]


def test_validate_summarises_without_secrets(tmp_path: Path, keys: dict[str, Path]) -> None:
    security = {
        "require_signed_tasks": True,
        "trusted_keys": {"alice": str(keys["alice"].with_suffix(".pub"))},
        "worker_key": str(keys["mallory"].with_suffix(".key")),
    }
    config = write_config(tmp_path / "c.json", tmp_path, security, environment={"DEPLOY_TOKEN": "tok-s3cret-42"})
    result = subprocess.run(
        [sys.executable, "-m", "ansible_worker", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "signatures    required, trusted keys: alice; max age 300s" in result.stdout
    assert "environment   DEPLOY_TOKEN for Ansible (values hidden)" in result.stdout
    assert "hunter2-broker" not in result.stdout + result.stderr
    assert "tok-s3cret-42" not in result.stdout + result.stderr


def test_validate_says_what_a_group_of_several_worker_keys_needs(tmp_path: Path, keys: dict[str, Path]) -> None:
    generate_key_pair(tmp_path / "east.key", tmp_path / "east.pub")
    security: dict[str, Any] = {
        "require_signed_tasks": True,
        "trusted_keys": {"alice": str(keys["alice"].with_suffix(".pub"))},
        "worker_key": str(keys["mallory"].with_suffix(".key")),
    }

    def validate(security: dict[str, Any]) -> str:
        config = write_config(tmp_path / "c.json", tmp_path, security)
        command = [sys.executable, "-m", "ansible_worker", "validate", "-c", str(config)]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    alone = validate(security)
    assert (
        "  claim keys    this worker's worker_key only: the other workers of the group must share it, or each"
        " worker must list the public keys of the others under security.worker_keys; claims signed by a key"
        " not listed do not count, and a task_id can run twice" in alone
    ), alone
    listed = validate({**security, "worker_keys": {"east": str(tmp_path / "east.pub")}})
    assert (
        "  claim keys    this worker's worker_key and east: every worker of the group must list the public"
        " key of each worker that does not share its worker_key; claims signed by a key not listed do not"
        " count, and a task_id can run twice" in listed
    ), listed
    unsigned = validate({})
    assert "claim keys" not in unsigned


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "ansible_worker", "keygen", "ci", "-d", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    private, public = tmp_path / "ci.key", tmp_path / "ci.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    fingerprint = Signer.from_file(private).fingerprint
    assert f"fingerprint {fingerprint}" in result.stdout
    assert private.read_text() not in result.stdout
    assert TrustedKeys.from_files({"ci": public}).names == ["ci"]
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 2
    assert again.stderr == f"error: {private}: exists already; a key is never overwritten\n"


def test_children_do_not_inherit_the_workers_secrets() -> None:
    base = {"PATH": "/bin", "ANSIBLE_WORKER_MQTT__PASSWORD": "pw", "MQTT_PASSWORD": "pw", "HOME": "/root"}
    env = child_environment(base, extra={"DEPLOY_TOKEN": "t"}, hidden_values=["pw", ""])
    assert env == {"PATH": "/bin", "HOME": "/root", "DEPLOY_TOKEN": "t"}
    assert os.environ.get("ANSIBLE_WORKER_EVENT_FIFO") is None
