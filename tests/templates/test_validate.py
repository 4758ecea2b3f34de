"""`ansible-worker validate` with templates and notifications: the summary, and each mistake named."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.ops.test_cli import cli, good_config
from tests.templates.test_launch import TEMPLATES

NOTIFY = """\
  templates: templates.yml
  templates_only: true
  notifications:
    - url: https://hooks.example/services/T000/B000/hook-token
      format: slack
      secret: signing-secret
"""


def test_validate_summarises_templates_and_notifications_without_secrets(tmp_path: Path, playbook_dir: Path) -> None:
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump(TEMPLATES))
    result = cli("validate", "-c", str(good_config(tmp_path, 1883, playbook_dir, extra=NOTIFY)))
    assert result.returncode == 0, result.stderr
    assert "templates     1 in templates.yml (greet); plain requests refused (templates_only)" in result.stdout
    assert "notifications https://hooks.example (slack, signed)" in result.stdout
    assert "hook-token" not in result.stdout + result.stderr
    assert "signing-secret" not in result.stdout + result.stderr


def test_validate_names_each_mistake_in_the_templates_file(tmp_path: Path, playbook_dir: Path) -> None:
    broken = {"templates": {"greet": {**TEMPLATES["templates"]["greet"], "playbook": "../outside.yml", "hosts": "all"}}}
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump(broken))
    result = cli("validate", "-c", str(good_config(tmp_path, 1883, playbook_dir, extra="  templates: templates.yml\n")))
    assert result.returncode == 2
    assert "worker.templates (templates.yml): templates.greet.hosts: unknown key" in result.stderr
    (playbook_dir / "templates.yml").write_text(
        yaml.safe_dump({"templates": {"greet": {"playbook": "../outside.yml"}}})
    )
    result = cli("validate", "-c", str(good_config(tmp_path, 1883, playbook_dir, extra="  templates: templates.yml\n")))
    assert result.returncode == 2
    assert "templates.greet.playbook: playbook must not contain '..': '../outside.yml'" in result.stderr


def test_a_settings_mistake_names_its_key(tmp_path: Path, playbook_dir: Path) -> None:
    only = cli("validate", "-c", str(good_config(tmp_path, 1883, playbook_dir, extra="  templates_only: true\n")))
    assert only.returncode == 2
    assert "worker: templates_only is true, but templates names no templates file" in only.stderr
    bad_url = "  notifications:\n    - url: ftp://example.com/x\n"
    url = cli("validate", "-c", str(good_config(tmp_path, 1883, playbook_dir, extra=bad_url)))
    assert url.returncode == 2
    assert "worker.notifications.0.url: must be an http:// or https:// URL with a host" in url.stderr
    assert "ftp://example.com/x" not in url.stderr
    bad_port = "  notifications:\n    - url: https://example.com:99999/x\n"
    port = cli("validate", "-c", str(good_config(tmp_path, 1883, playbook_dir, extra=bad_port)))
    assert "worker.notifications.0.url: has a port that is not one" in port.stderr
