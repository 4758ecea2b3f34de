"""`ansible-worker adhoc`: an ad-hoc command published, run by a worker and followed to its end, as `submit` does for playbooks."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Broker, make_settings, running_worker
from tests.controller.test_controller_cli import cli, json_lines


async def test_adhoc_wait_runs_the_module_and_shows_its_lines(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, ad_hoc_modules=["ping", "debug"])
    async with running_worker(settings):
        ping = await cli(broker, group, "adhoc", "all", "-m", "ping", "-i", "one_host.ini", "--task-id", "p1", "--wait")
        debug = await cli(
            broker, group, "adhoc", "host1", "-m", "debug", "-a", '{"msg": "{{ not templated }}"}',
            "-i", "inventory.ini", "--task-id", "d1", "--wait", "--json",
        )  # fmt: skip
        refused = await cli(broker, group, "adhoc", "all", "-m", "shell", "-a", "id", "-i", "one_host.ini", "--json")
        listed = await cli(broker, group, "jobs", "--json")
    assert ping.returncode == 0, ping.stderr.decode()
    output = ping.stdout.decode()
    assert "ok: [host1]" in output
    assert "success  p1  ad-hoc ping" in output
    assert debug.returncode == 0, debug.stderr.decode()
    final = json_lines(debug, "adhoc --wait --json")[-1]["data"]
    assert final["state"] == "success"
    assert (final["module"], final["tasks_ok"], final["tasks_total"]) == ("debug", 1, 1)
    assert "{{ not templated }}" in debug.stdout.decode()
    assert refused.returncode == 1
    answer = json.loads(refused.stdout)
    assert answer["error_message"] == "module 'shell' is not allowed on this worker (worker.ad_hoc_modules)"
    rows = {row["task_id"]: row for row in (json.loads(line) for line in listed.stdout.decode().splitlines())}
    assert (rows["p1"]["module"], rows["p1"]["playbook"]) == ("ping", None)
