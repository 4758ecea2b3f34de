"""The dashboard with a history store (list, filters, pages and a job's page from the store, live changes from the broker), and without one at more jobs than it keeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from ansible_worker.dashboard.limits import MAX_JOBS
from ansible_worker.history.messages import read_record
from ansible_worker.history.reader import open_history
from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.topics import Topics
from testing.broker import Broker
from tests.dashboard.browser import chromium, click, dashboard, get, have_chromium, text_of, wait_until
from tests.history.helpers import record, status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_chromium(), reason="needs Debian's chromium and chromium-driver"),
]
STORED = 120


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def stored_state(number: int) -> str:
    return "failed" if number % 10 == 0 else "success"


async def seed(url: str) -> None:
    """Jobs of last week, in the store only: the broker has long forgotten them."""
    week_ago = datetime.now(UTC) - timedelta(days=7)
    rows = []
    for number in range(STORED):
        task_id = f"old-{number:03d}"
        final = status(task_id, stored_state(number), began=week_ago + timedelta(minutes=number))
        rows.append(read_record(task_id, record(final, ("web3",), output=f"PLAY [{task_id}]\n")))
    async with open_history(url, migrate=True) as history:
        await history.write(rows)


async def publish(broker: Broker, group: str, statuses: list[dict[str, object]]) -> None:
    topics = Topics("ansible", group)
    async with open_mqtt_link(LinkOptions("127.0.0.1", broker.port, "test-publisher")) as link:
        for value in statuses:
            await link.publish(topics.status(str(value["task_id"])), json.dumps(value).encode(), qos=1, retain=True)


def listed(driver: WebDriver) -> list[str]:
    return list(
        driver.execute_script("return [...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.taskId);")
    )


def test_the_list_filters_pages_and_a_jobs_page_come_from_the_store(
    broker: Broker, group: str, tmp_path: Path, browser: WebDriver
) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    trio.run(seed, url)
    with dashboard(broker, group, tmp_path / "dashboard.log", "--history", url) as page:
        browser.get(page)
        wait_until(browser, lambda d: listed(d)[:1] == ["old-119"], message="the store's newest job is not first")
        assert listed(browser) == [f"old-{n:03d}" for n in range(119, 69, -1)]  # a page of 50
        assert "from the history store" in text_of(browser, "#job-count")
        click(browser, "#next-page")
        wait_until(browser, lambda d: listed(d)[:1] == ["old-069"], message="the second page is not the next 50")
        assert listed(browser) == [f"old-{n:03d}" for n in range(69, 19, -1)]
        click(browser, "#next-page")
        wait_until(browser, lambda d: listed(d)[-1:] == ["old-000"], message="no third page")
        assert browser.find_element("id", "next-page").get_property("disabled")
        # The filter is asked of the store: failed jobs of every page, on the first.
        Select(browser.find_element("id", "state-filter")).select_by_visible_text("failed")
        failed = [f"old-{n:03d}" for n in range(110, -1, -10)]
        wait_until(browser, lambda d: listed(d) == failed, message="the store's failed jobs are not listed")
        # Live changes still come from the broker, on top of the store's page.
        trio.run(publish, broker, group, [status("live-1", "failed")])
        wait_until(browser, lambda d: listed(d)[:1] == ["live-1"], message="a live job is not shown")
        # A job only the store holds has its page, with its record.
        browser.get(page + "#/job/old-003")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "success", message="no page for a stored job")
        wait_until(browser, lambda d: "PLAY [old-003]" in text_of(d, "#output"), message="no record from the store")
        # The endpoint refuses what is not a state, a playbook filter or a cursor.
        for query in ("state=pwned", "before=nan,old-1", "before=1,a%2Fb", "playbook=" + "x" * 300):
            assert get(page + "api/jobs?" + query)[0] == 400, query
        code, body = get(page + "api/jobs?state=failed")
        assert code == 200
        assert [job["task_id"] for job in json.loads(body)["jobs"]][:2] == ["old-110", "old-100"]


@pytest.mark.parametrize("queue", ["unlimited", "stock"])
def test_without_a_store_the_page_says_when_it_lists_only_part(
    queue: str, group: str, tmp_path: Path, browser: WebDriver
) -> None:
    """More retained jobs than the dashboard keeps, or than a stock Mosquitto queues for it: the page says so."""
    broker = Broker(tmp_path, "max_queued_messages 0\n" if queue == "unlimited" else "")
    broker.start()
    try:
        begun = datetime.now(UTC) - timedelta(hours=1)
        statuses = [status(f"job-{n:05d}", began=begun + timedelta(seconds=n)) for n in range(MAX_JOBS + 300)]
        trio.run(publish, broker, group, statuses)
        with dashboard(broker, group, tmp_path / "dashboard.log") as page:
            browser.get(page)
            wait_until(browser, lambda d: len(listed(d)) == 50, message="no jobs listed")
            note = text_of(browser, "#partial-note")
            if queue == "unlimited":
                assert listed(browser)[0] == f"job-{MAX_JOBS + 299:05d}"
                assert f"the dashboard keeps at most {MAX_JOBS:,}" in note
                assert "older ones the broker retains are not listed here" in note
            else:
                assert "Mosquitto's max_queued_messages" in note
                assert "older jobs may be missing here" in note
            assert "Set history.url for all of them" in note
            assert get(page + "api/jobs")[0] == 404
    finally:
        broker.stop()
