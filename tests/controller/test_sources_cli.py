"""The command line for job sources: `submit --ship`, `--project`, `--revision`, and what `status` says ran."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import PLAYBOOKS, Broker, make_settings, running_worker
from tests.controller.test_controller_cli import cli
from tests.run.test_job_sources import SHOW, Origin


async def test_submit_ship_then_status_names_the_digest(broker: Broker, tmp_path: Path, group: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "show.yml").write_text(SHOW)
    (tree / "version.txt").write_text("shipped")
    (tree / "one_host.ini").write_text((PLAYBOOKS / "one_host.ini").read_text())
    own = tmp_path / "own"
    own.mkdir()
    settings = make_settings(broker.port, own, group, allow_shipped_content=True, state_dir=tmp_path / "state")
    async with running_worker(settings):
        first = await cli(broker, group, "submit", "show.yml", "-i", "one_host.ini", "--ship", str(tree), "--wait")
        second = await cli(
            broker, group, "submit", "show.yml", "-i", "one_host.ini", "--ship", str(tree), "--task-id", "cli-ship"
        )
        shown = await cli(broker, group, "status", "cli-ship")
        missing = await cli(broker, group, "submit", "show.yml", "-i", "x", "--ship", str(tmp_path / "nowhere"))
    assert first.returncode == 0, first.stderr.decode()
    sent = re.search(r"shipped 3 entries, 0\.0 MB, sha256 ([0-9a-f]{64}): sent", first.stderr.decode())
    assert sent, first.stderr.decode()
    assert f"shipped sha256 {sent.group(1)}" in first.stdout.decode()
    assert "already on the broker, not sent again" in second.stderr.decode()
    assert f"shipped sha256 {sent.group(1)}" in shown.stdout.decode()
    assert missing.returncode == 2
    assert missing.stderr.decode().startswith("error: --ship: not a directory: ")


async def test_submit_project_revision_then_status_names_the_commit(broker: Broker, tmp_path: Path, group: str) -> None:
    origin = Origin(tmp_path)
    commit = origin.commit("one", tag="v1")
    origin.commit("two")
    projects = {"site": {"url": origin.url, "allow_revision": True}}
    settings = make_settings(broker.port, tmp_path / "seed", group, projects=projects, state_dir=tmp_path / "state")
    async with running_worker(settings):
        result = await cli(
            broker, group, "submit", "show.yml", "-i", "one_host.ini", "--project", "site", "--revision", "v1", "--wait"
        )
    assert result.returncode == 0, result.stderr.decode()
    assert f"from project site at commit {commit}" in result.stdout.decode()
