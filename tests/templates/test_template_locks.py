"""A template decides its jobs' locks: `max_concurrent` caps the template's jobs across the group, `locks` names theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Broker, make_settings, open_controller, running_worker
from tests.worker.test_host_locks import HOSTS, STAMP, interval, overlap


def write_templates(playbook_dir: Path, stamps: Path) -> str:
    (playbook_dir / "stamp.yml").write_text(STAMP)
    (playbook_dir / "web.ini").write_text(HOSTS)
    deploy: dict[str, Any] = {
        "playbook": "stamp.yml",
        "inventory": "web.ini",
        "extra_vars": {"log_dir": str(stamps), "seconds": 2},
        "survey": {"name": {"type": "string", "required": True}},
    }
    templates = {
        # One at a time in the whole group, whatever hosts: a release train.
        "deploy": {**deploy, "locks": [], "max_concurrent": 1},
        # Any number at once: its jobs name no lock, not even their hosts.
        "report": {**deploy, "locks": []},
    }
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump({"templates": templates}))
    return "templates.yml"


async def test_a_templates_max_concurrent_holds_across_two_workers(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    name = write_templates(playbook_dir, stamps)
    settings: dict[str, Any] = {"concurrency": 2, "host_locks": True, "templates": name}
    deploys, reports = ["deploy-1", "deploy-2"], ["report-1", "report-2"]
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="a", **settings)),
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="b", **settings)),
    ):
        for task_id in [*deploys, *reports]:
            template = task_id.split("-")[0]
            await controller.submit({"task_id": task_id, "template": template, "extra_vars": {"name": task_id}})
        finals = [await controller.wait_terminal(task_id, within=120) for task_id in [*deploys, *reports]]
    assert [final["state"] for final in finals] == ["success"] * 4, finals
    assert not overlap(interval("deploy-1", stamps), interval("deploy-2", stamps))
    waited = [status["waiting_for"] for task_id in deploys for status in controller.statuses[task_id]]
    assert any(isinstance(why, dict) and why.get("max_concurrent") == 1 for why in waited)
    # The other template's jobs hold nothing: no wait of theirs names a lock or a cap.
    for task_id in reports:
        assert not any(
            isinstance(why := status.get("waiting_for"), dict) and "held_by" in why
            for status in controller.statuses[task_id]
        )
