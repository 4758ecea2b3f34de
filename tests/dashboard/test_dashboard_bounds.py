"""The dashboard with many jobs: paging and filters in a browser, and a flood of refusals kept within bounds."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from ansible_worker.controller.client import open_client, target_from_url
from tests.conftest import Broker, client_for
from tests.dashboard.browser import (
    BROWSER_TESTS,
    click,
    dashboard,
    text_of,
    wait_until,
)

pytestmark = BROWSER_TESTS


# README's figures: the dashboard keeps this many jobs, and statuses up to this size whole.
KEPT_JOBS = 2000
KEPT_STATUS_BYTES = 16 * 1024


async def _publish_statuses(broker: Broker, group: str, count: int) -> None:
    async with open_client(target_from_url(f"mqtt://127.0.0.1:{broker.port}", group=group)) as client:
        for index in range(count):
            state = "failed" if index % 10 == 0 else "success"
            playbook = "db.yml" if index % 4 == 0 else "web.yml"
            created = f"2026-01-01T00:{index // 60:02d}:{index % 60:02d}Z"
            body = {"task_id": f"j{index:03d}", "state": state, "playbook": playbook, "created_at": created}
            await client.publish(client.topics.status(f"j{index:03d}"), json.dumps(body).encode(), qos=1, retain=True)


def test_many_jobs_are_paged_and_filtered(broker: Broker, group: str, tmp_path: Path, browser: WebDriver) -> None:
    trio.run(_publish_statuses, broker, group, 120)
    rows = "return [...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.taskId);"
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        browser.get(url)
        wait_until(browser, lambda d: text_of(d, "#page-info") == "page 1 of 3", message="not paged")
        shown = browser.execute_script(rows)
        assert len(shown) == 50
        assert shown[0] == "j119"  # newest first
        click(browser, "#next-page")
        wait_until(browser, lambda d: d.execute_script(rows)[0] == "j069", message="no second page")
        Select(browser.find_element("id", "state-filter")).select_by_visible_text("failed")
        wait_until(browser, lambda d: len(d.execute_script(rows)) == 12, message="state filter")
        assert text_of(browser, "#page-info") == "page 1 of 1"
        browser.find_element("id", "playbook-filter").send_keys("db")
        # failed (every 10th) and db.yml (every 4th): every 20th, 6 of 120.
        wait_until(browser, lambda d: d.execute_script(rows) == [f"j{n:03d}" for n in range(100, -1, -20)])


def first_message(url: str) -> tuple[dict[str, Any], int]:
    """The first message of the dashboard's event stream at `url`, and its size in bytes."""
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (our own loopback URL)
        line = response.readline()
    assert line.startswith(b"data: "), line[:200]
    return dict(json.loads(line[len(b"data: ") :])), len(line)


def status_body(task_id: str, state: str, created: str, **fields: Any) -> bytes:
    return json.dumps({"task_id": task_id, "state": state, "created_at": created, **fields}).encode()


async def _publish_jobs(broker: Broker, group: str) -> None:
    """What the broker holds before the dashboard starts: a job running since long ago, two finished."""
    async with client_for(broker, group) as client:
        jobs = {
            "long-running": status_body("long-running", "running", "2026-01-01T00:00:00Z", playbook="deploy.yml"),
            "old-done": status_body("old-done", "success", "2026-01-02T00:00:00Z", playbook="deploy.yml"),
            # A status far bigger than a list line: its `output` holds a megabyte.
            "big": status_body("big", "success", "2026-01-03T00:00:00Z", output={"blob": "b" * 1024 * 1024}),
        }
        for task_id, body in jobs.items():
            await client.publish(client.topics.status(task_id), body, qos=1, retain=True)


async def _refuse_junk(broker: Broker, group: str, count: int) -> None:
    """The live refusals a worker sends for messages with made-up task_ids, then one real job."""
    async with client_for(broker, group) as client:
        for index in range(count):
            created = f"2026-02-01T{index // 3600:02d}:{index // 60 % 60:02d}:{index % 60:02d}Z"
            refusal = status_body(
                f"junk-{index}", "failed", created, refused=True, playbook="p" * 1000, error_message="e" * 2000
            )
            await client.publish(client.topics.status(f"junk-{index}"), refusal, qos=1)
        last = status_body("last", "success", "2026-03-01T00:00:00Z", playbook="site.yml")
        await client.publish(client.topics.status("last"), last, qos=1, retain=True)


def test_a_flood_of_refused_jobs_keeps_the_list_bounded_and_the_jobs_that_ran(
    broker: Broker, group: str, tmp_path: Path
) -> None:
    trio.run(_publish_jobs, broker, group)
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        trio.run(_refuse_junk, broker, group, KEPT_JOBS + 300)
        deadline = time.monotonic() + 60
        while True:
            first, size = first_message(url + "api/stream")
            listed = {row["task_id"] for row in first["jobs"]}
            if "last" in listed:
                break
            assert time.monotonic() < deadline, "the dashboard never listed the last job"
            time.sleep(0.2)
        page = first_message(url + "api/stream?job=big")[0]["job"]
    assert len(listed) <= KEPT_JOBS
    # Refusals go first, then the oldest finished jobs; a running job only after every finished one.
    assert {"long-running", "old-done", "big", "last"} <= listed
    assert f"junk-{KEPT_JOBS + 299}" in listed
    assert "junk-0" not in listed
    # Each line of the list is short, whatever the status holds.
    assert size <= KEPT_JOBS * 1024, size
    assert len(json.dumps(page)) <= KEPT_STATUS_BYTES
    assert page["status"]["state"] == "success"
    assert "ansible-worker status big" in page["status"]["dashboard_note"]
