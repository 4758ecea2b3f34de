"""The dashboard's job list in a browser: filters by state, playbook, worker, host and time; the keyboard."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.conftest import Broker, client_for
from tests.dashboard.browser import (
    BROWSER_TESTS,
    axe_problems,
    cli,
    dashboard,
    job_state,
    submit,
    text_of,
    wait_until,
)
from tests.dashboard.test_job_page import DOCS, ROWS, set_dark

pytestmark = BROWSER_TESTS


async def _publish_old_jobs(broker: Broker, group: str) -> None:
    """Two finished jobs of another worker, a week old."""
    async with client_for(broker, group) as client:
        for task_id, playbook in (("old-db", "db.yml"), ("old-web", "web.yml")):
            body = {
                "task_id": task_id,
                "state": "success",
                "playbook": playbook,
                "worker_id": "w9",
                "created_at": "2026-01-01T00:00:00Z",
                "duration_seconds": 64.2,
                "tasks_ok": 3,
            }
            await client.publish(client.topics.status(task_id), json.dumps(body).encode(), qos=1, retain=True)


async def _publish_waiting_job(broker: Broker, group: str) -> None:
    """A job queued behind host locks that another worker's job holds."""
    async with client_for(broker, group) as client:
        body = {
            "task_id": "held",
            "state": "queued",
            "playbook": "web.yml",
            "worker_id": "w9",
            "created_at": "2026-01-01T00:00:00Z",
            "waiting_for": {"locks": ["web3", "db1"], "held_by": "deploy-41 on w2", "ahead": 1},
        }
        await client.publish(client.topics.status("held"), json.dumps(body).encode(), qos=1, retain=True)


def listed(driver: WebDriver) -> list[str]:
    return list(
        driver.execute_script("return [...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.taskId);")
    )


def check_the_filters(driver: WebDriver) -> None:
    """Filters by worker, playbook, time and host, each narrowing the list to what it names; cleared, all four again."""
    Select(driver.find_element("id", "worker-filter")).select_by_visible_text("w9")
    wait_until(driver, lambda d: listed(d) == ["old-web", "old-db"], message="worker filter")
    driver.find_element("id", "playbook-filter").send_keys("web")
    wait_until(driver, lambda d: listed(d) == ["old-web"], message="playbook filter")
    driver.find_element("id", "playbook-filter").clear()
    driver.find_element("id", "playbook-filter").send_keys(" ")
    Select(driver.find_element("id", "worker-filter")).select_by_visible_text("all")
    Select(driver.find_element("id", "time-filter")).select_by_visible_text("last 24 hours")
    wait_until(driver, lambda d: listed(d) == ["other", "quick"], message="time filter")
    host = driver.find_element("id", "host-filter")
    host.send_keys("HOST2")
    wait_until(driver, lambda d: listed(d) == ["other"], message="host filter")
    assert "1 job known to have run on a host" in text_of(driver, "#host-note")
    host.clear()
    host.send_keys(" ")
    wait_until(driver, lambda d: listed(d) == ["other", "quick"], message="host filter cleared")
    Select(driver.find_element("id", "time-filter")).select_by_visible_text("any time")
    wait_until(driver, lambda d: len(listed(d)) == 4)


def check_the_keyboard_moves_between_jobs(driver: WebDriver) -> None:
    """Down and Up move the focus between the jobs' links, Enter opens one."""
    # The keyboard: Down and Up move between the jobs, Enter opens one.
    driver.execute_script("document.querySelector('tr[data-task-id=\"other\"] a.job-link').focus();")
    ActionChains(driver).send_keys(Keys.ARROW_DOWN).perform()
    wait_until(
        driver,
        lambda d: d.execute_script("return document.activeElement.textContent;") == "quick",
        message="the focus is not on quick",
    )
    ActionChains(driver).send_keys(Keys.ARROW_UP).perform()
    wait_until(
        driver,
        lambda d: d.execute_script("return document.activeElement.textContent;") == "other",
        message="the focus is not on other",
    )
    ActionChains(driver).send_keys(Keys.ARROW_DOWN, Keys.ENTER).perform()
    wait_until(driver, lambda d: text_of(d, "#job-id") == "quick", message="Enter did not open the job")


def test_the_job_list_filters_by_state_playbook_worker_host_and_time(
    broker: Broker, group: str, worker: str, playbook_dir: Path, tmp_path: Path, browser: WebDriver
) -> None:
    play = [{"name": "Everywhere", "hosts": "all", "gather_facts": False, "tasks": [{"ansible.builtin.ping": {}}]}]
    (playbook_dir / "everywhere.yml").write_text(json.dumps(play))
    trio.run(_publish_old_jobs, broker, group)
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        browser.set_window_size(1280, 900)
        browser.get(url)
        wait_until(browser, lambda d: "online" in text_of(d, f'tr[data-worker-id="{worker}"]'), message="no worker")
        # The hosts a job ran on are known from its events: quick.yml runs on host1, the other here on host2.
        submit(broker, group, "quick", "quick.yml", "--wait")
        result = cli(
            broker, group, "submit", "everywhere.yml", "-i", "inventory.ini", "-l", "host2", "--task-id", "other"
        )
        assert result.returncode == 0, result.stderr
        wait_until(browser, lambda d: job_state(d, "other") == "success", 60, "never shown success")
        assert listed(browser) == ["other", "quick", "old-web", "old-db"]
        row = browser.execute_script(ROWS, 'tr[data-task-id="old-web"]')[0]
        assert row[5] == "1m 04s"
        assert "ago" in row[4]
        check_the_filters(browser)
        check_the_keyboard_moves_between_jobs(browser)
        # A failed job and a running one, for the list and its workers as a person sees them.
        browser.get(url)
        submit(broker, group, "broken", "fail.yml", "--wait", code=1)
        submit(broker, group, "long", "sleep.yml", "-e", "seconds=60")
        running = f'tr[data-worker-id="{worker}"] .running-now'
        wait_until(browser, lambda d: text_of(d, running) == "long Sleep for a while", message="not shown running")
        browser.execute_script("document.activeElement.blur();")
        browser.save_screenshot(str(DOCS / "dashboard-list.png"))
        assert axe_problems(browser) == []
        set_dark(browser, True)
        assert axe_problems(browser) == []
        # A queued job says in its row why it does not run yet.
        trio.run(_publish_waiting_job, broker, group)
        held = 'tr[data-task-id="held"] .why.waiting'
        wait_until(
            browser,
            lambda d: text_of(d, held) == "waiting for web3, db1 (held by deploy-41 on w2)",
            message=f"no reason to wait in the row: {listed(browser)}",
        )
