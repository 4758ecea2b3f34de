"""The dashboard's run again on failed hosts, in a real browser: the hosts from the job's record, the request as heard."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import Broker, worker_config
from tests.dashboard.browser import broker_status, chromium, cli, dashboard, have_chromium, process, text_of, wait_until
from tests.run.test_retry import FLAKY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_chromium(), reason="needs Debian's chromium and chromium-driver"),
]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def test_run_again_on_failed_hosts_runs_only_the_host_that_failed(
    broker: Broker, group: str, playbook_dir: Path, tmp_path: Path, browser: WebDriver
) -> None:
    (playbook_dir / "flaky.yml").write_text(FLAKY)
    logs = tmp_path / "logs"
    logs.mkdir()
    config = worker_config(tmp_path / "worker.json", broker, playbook_dir, group, worker_id="w1")
    with (
        process(["run", "-c", str(config)], tmp_path / "worker.log"),
        dashboard(broker, group, tmp_path / "dashboard.log", "--allow-actions") as url,
    ):
        browser.get(url)
        result = cli(
            broker, group, "submit", "flaky.yml", "-i", "inventory.ini", "-e", f"log_dir={logs}",
            "--task-id", "flaky", "--wait",
        )  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        browser.get(url + "#/job/flaky")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "failed")
        wait_until(browser, lambda d: d.find_elements("id", "rerun-failed-button"), message="no failed-hosts button")
        browser.find_element("id", "rerun-failed-button").click()
        wait_until(browser, lambda d: text_of(d, "#job-id") not in ("", "flaky"), message="no new job page")
        again = text_of(browser, "#job-id")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "success", message="the new job did not succeed")
        status = broker_status(broker, group, again)
        assert (status["state"], status["tasks_total"]) == ("success", 2)
        assert sorted((logs / "runs.log").read_text().split()) == ["host1", "host2", "host2"]
        # The page is never sent a record's request (its extra_vars may hold secrets).
        headers = {"Origin": url.rstrip("/")}
        request = urllib.request.Request(url + f"api/jobs/{again}/record", headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (our own loopback URL)
            record = json.loads(response.read())
        assert record["status"]["task_id"] == again
        assert "request" not in record
        assert str(logs) not in json.dumps(record["status"])
