"""The argv of a job, and the paths it may name, from a task request."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_worker.protocol.models import TaskRequest
from ansible_worker.run.argv import build_argv, resolve_inventory, resolve_playbook
from ansible_worker.run.errors import JobRefusedError


def test_argv_glues_values_to_options(tmp_path: Path) -> None:
    job = TaskRequest.model_validate(
        {
            "task_id": "t",
            "playbook": "p.yml",
            "inventory": "i",
            "limit": "web,db",
            "tags": ["a", "b"],
            "skip_tags": ["c"],
            "verbosity": 2,
            "check_mode": True,
            "diff_mode": True,
            "forks": 9,
        }
    )
    argv = build_argv(
        job, executable="ap", playbook=tmp_path / "p.yml", inventory="h1,", extra_vars_file=tmp_path / "x.yml"
    )
    assert argv == [
        "ap",
        "--inventory=h1,",
        f"--extra-vars=@{tmp_path / 'x.yml'}",
        "--limit=web,db",
        "--tags=a,b",
        "--skip-tags=c",
        "--forks=9",
        "-vv",
        "--check",
        "--diff",
        "--",
        str(tmp_path / "p.yml"),
    ]


def test_paths_stay_inside_the_playbook_directory(tmp_path: Path) -> None:
    base = (tmp_path / "base").resolve()
    (base / "sub").mkdir(parents=True)
    (base / "sub" / "site.yml").write_text("[]")
    (base / "inventories").mkdir()
    (tmp_path / "secret.yml").write_text("[]")
    (base / "link.yml").symlink_to(tmp_path / "secret.yml")
    assert resolve_playbook(base, "sub/site.yml") == base / "sub" / "site.yml"
    assert resolve_inventory(base, "inventories") == str(base / "inventories")
    assert resolve_inventory(base, "web1,web2") == "web1,web2"
    for bad, message in [
        ("../secret.yml", "playbook must not contain '..': '../secret.yml'"),
        ("sub/../../secret.yml", "playbook must not contain '..': 'sub/../../secret.yml'"),
        ("/etc/passwd", "playbook must be relative to the playbook directory: '/etc/passwd'"),
        ("link.yml", "playbook resolves outside the playbook directory: 'link.yml'"),
        ("sub", "playbook is not a file: 'sub'"),
        ("missing.yml", "playbook not found: 'missing.yml'"),
    ]:
        with pytest.raises(JobRefusedError) as caught:
            resolve_playbook(base, bad)
        assert str(caught.value) == message
