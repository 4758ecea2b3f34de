"""The dashboard in a real browser: a broker, a worker process, the dashboard process and headless Chromium."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import trio
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from ansible_worker.controller.client import open_client, target_from_url
from tests.conftest import Broker
from tests.dashboard.browser import (
    BROWSER_TESTS,
    EXECUTABLE,
    answered,
    axe_problems,
    broker_status,
    dashboard,
    get,
    job_state,
    open_job,
    post,
    submit,
    text_of,
    wait_for_text,
    wait_until,
)

pytestmark = BROWSER_TESTS


@pytest.fixture
def logging_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker that logs every SUBSCRIBE, UNSUBSCRIBE and PUBLISH it receives, with the topic."""
    directory = tmp_path / "logging-broker"
    directory.mkdir()
    instance = Broker(directory, "log_type subscribe\nlog_type unsubscribe\nlog_type debug\n")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def test_a_task_id_that_is_not_one_gets_404_and_touches_nothing(
    logging_broker: Broker, group: str, tmp_path: Path
) -> None:
    broker = logging_broker
    log = tmp_path / "dashboard.log"
    with dashboard(broker, group, log, "--allow-actions") as url:
        headers = {"X-Dashboard-Action": "1", "Origin": url.rstrip("/")}
        # The dashboard subscribed to the group's topics before it listened: what the log says next is ours.
        before = len(broker.log.read_text())
        # Wildcards, a level that holds one, too long, not ASCII, a space: what an <img> on any page can ask for.
        answers = {}
        for bad in ("%23", "%2B", "a%2Bb", "x%23", "x" * 129, "%C3%A9", "a%20b", "%00"):
            answers[bad] = (
                get(url + f"api/jobs/{bad}/record"),
                answered(partial(post, url + f"api/jobs/{bad}/cancel", headers)),
                answered(partial(post, url + f"api/jobs/{bad}/rerun", headers)),
                get(url + f"api/stream?job={bad}")[0],
            )
        for bad, (record, cancel, rerun, stream) in answers.items():
            assert (record[0], cancel, rerun, stream) == (404, 404, 404, 404), (bad, answers[bad])
            assert json.loads(record[1])["error"].startswith("not a task_id: "), record
        # A real task_id does subscribe to its record: the broker's log shows what the requests above did.
        assert get(url + "api/jobs/fine/record")[0] == 404
        broker_log = wait_for_text(broker.log, f"ansible/{group}/tasks/fine/record")
        assert get(url + "api/stream?job=fine")[0] == 200
    touched = [line for line in broker_log[before:].splitlines() if f"ansible/{group}/tasks/" in line]
    assert touched, "the broker's log shows no topic of the group's jobs"
    assert all("tasks/fine/record" in line for line in touched), touched
    assert "malformed" not in broker_log
    assert "lost the broker" not in log.read_text()


def test_a_job_appears_and_goes_from_queued_to_success_live(
    broker: Broker, group: str, worker: str, tmp_path: Path, browser: WebDriver
) -> None:
    with dashboard(broker, group, tmp_path / "dashboard.log", "--allow-actions") as url:
        browser.get(url)
        wait_until(browser, lambda d: "online" in text_of(d, f'tr[data-worker-id="{worker}"]'), message="no worker")
        browser.execute_script("window.notReloaded = true;")
        # The worker runs one job at a time: the second waits, queued, behind the first.
        submit(broker, group, "busy", "sleep.yml", "-e", "seconds=3")
        submit(broker, group, "quick")
        wait_until(browser, lambda d: job_state(d, "quick") == "queued", message="never shown queued")
        wait_until(browser, lambda d: job_state(d, "quick") == "success", message="never shown success")
        assert browser.execute_script("return window.notReloaded === true;")
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.taskId);"
        )
        assert rows[:2] == ["quick", "busy"]  # newest first
        open_job(browser, "quick")
        wait_until(browser, lambda d: "ok: [host1]" in text_of(d, "#output"), message="no Ansible output")
        output = text_of(browser, "#output")
        assert "TASK [Say something]" in output
        assert '"msg": "quick"' in output
        assert browser.find_elements("css selector", "#output .k-ok"), "the ok line lost its colour"
        assert text_of(browser, "#job-state") == "success"
        assert text_of(browser, ".field-worker_id") == worker
        # The finished job's record: Ansible's own output, as ansible-playbook printed it.
        wait_until(browser, lambda d: "PLAY RECAP" in text_of(d, '#output[data-source="record"]'), message="no record")


def focused(driver: WebDriver) -> str:
    """What has the keyboard focus: `#id`, or the href of a link, or the tag name."""
    script = (
        "const e = document.activeElement;return e.id ? '#' + e.id : e.getAttribute('href') || e.tagName.toLowerCase();"
    )
    return str(driver.execute_script(script))


def tab_to(driver: WebDriver, target: str, most: int = 60) -> list[str]:
    """Press Tab until `target` (as `focused` names it) has the focus; what got it on the way."""
    seen = [focused(driver)]
    while seen[-1] != target:
        assert len(seen) <= most, f"Tab never reached {target}: {seen}"
        ActionChains(driver).send_keys(Keys.TAB).perform()
        seen.append(focused(driver))
    return seen


def write_long_playbook(playbook_dir: Path) -> None:
    """`long.yml`: thirty tasks of long lines, more output than the output box shows at once."""
    tasks = [{"name": f"Step {n}", "ansible.builtin.debug": {"msg": f"step {n} " + "w" * 200}} for n in range(30)]
    play = [{"name": "Long", "hosts": "host1", "gather_facts": False, "tasks": tasks}]
    (playbook_dir / "long.yml").write_text(json.dumps(play))


def job_links(driver: WebDriver) -> list[list[str]]:
    """Each row of the job list: its task_id, and the href and text of the link in its id cell."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('#jobs tbody tr')].map(row => {"
            "  const a = row.querySelector('td.task-id a');"
            "  return [row.dataset.taskId, a && a.getAttribute('href'), a && a.textContent]; });"
        )
    )


def back_to_the_list_by_keyboard(driver: WebDriver) -> None:
    """From a job's page: Shift+Tab until the link to all jobs has the focus, then Enter."""
    ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    while focused(driver) != "#/":
        ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
        assert focused(driver) != "body", "Shift+Tab never reached the link to all jobs"
    ActionChains(driver).send_keys(Keys.ENTER).perform()


def cancel_by_keyboard(driver: WebDriver, reason: str) -> None:
    """On a running job's page: Tab to the reason, type it, Tab to the cancel button, Enter."""
    tab_to(driver, "#cancel-reason")
    ActionChains(driver).send_keys(reason, Keys.TAB).perform()
    assert focused(driver) == "#cancel-button"
    ActionChains(driver).send_keys(Keys.ENTER).perform()


def test_jobs_are_links_every_control_works_by_keyboard_and_axe_finds_nothing_serious(
    broker: Broker, group: str, worker: str, playbook_dir: Path, tmp_path: Path, browser: WebDriver
) -> None:
    # Long enough output that the output box scrolls; and a worker whose heartbeats stopped.
    write_long_playbook(playbook_dir)
    trio.run(_publish_presences, broker, group)
    with dashboard(broker, group, tmp_path / "dashboard.log", "--allow-actions") as url:
        submit(broker, group, "done", "long.yml", "--wait")
        submit(broker, group, "going", "sleep.yml")
        browser.get(url)
        wait_until(browser, lambda d: job_state(d, "going") == "running", message="never shown running")
        wait_until(
            browser,
            lambda d: "stale" in d.find_element("css selector", 'tr[data-worker-id="silent"]').get_attribute("class"),
        )
        # Every job id in the list is a link to the job's page, which a new tab opens as well.
        assert sorted(job_links(browser)) == [["done", "#/job/done", "done"], ["going", "#/job/going", "going"]]
        # The list and the workers view.
        assert axe_problems(browser) == []
        # From the top of the page, Tab reaches the filters and each job's link, and Enter opens it.
        way = tab_to(browser, "#/job/done")
        assert {"#state-filter", "#playbook-filter", "#/job/going"} <= set(way), way
        # The list is drawn anew every second: the link keeps the focus.
        browser.execute_script("window.drawn = document.querySelector('tr[data-task-id=\"done\"]');")
        wait_until(
            browser,
            lambda d: d.execute_script("return document.querySelector('tr[data-task-id=\"done\"]') !== window.drawn;"),
            message="the list was not drawn again",
        )
        assert focused(browser) == "#/job/done"
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_until(browser, lambda d: text_of(d, "#job-id") == "done", message="Enter did not open the job")
        wait_until(
            browser, lambda d: d.find_elements("css selector", '#output[data-source="record"]'), message="no record"
        )
        assert focused(browser) == "#job-heading"
        # A finished job's page, its output scrolling.
        assert browser.execute_script(
            "const o = document.getElementById('output'); return o.scrollHeight > o.clientHeight;"
        )
        assert axe_problems(browser) == []
        tab_to(browser, "#rerun-button")
        # Back to the list by keyboard: Shift+Tab to "all jobs", Enter; the focus is on the job's link again.
        back_to_the_list_by_keyboard(browser)
        wait_until(browser, lambda d: focused(d) == "#/job/done", message="the focus did not come back to the job")
        # A running job's page: the reason and the cancel button, by keyboard only.
        tab_to(browser, "#/job/going")
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_until(browser, lambda d: d.find_elements("id", "cancel-button"), message="no cancel button")
        assert axe_problems(browser) == []
        cancel_by_keyboard(browser, "typed, not clicked")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "cancelled", message="not cancelled by keyboard")
        assert "typed, not clicked" in json.dumps(broker_status(broker, group, "going"))
        # The same address in a new tab opens the same page.
        browser.switch_to.new_window("tab")
        browser.get(url + "#/job/going")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "cancelled", message="the link did not open the job")


def test_a_failed_job_page_scrolls_to_the_failed_task(
    broker: Broker, group: str, worker: str, playbook_dir: Path, tmp_path: Path, browser: WebDriver
) -> None:
    # Forty lines of output before the failure, more than the output box shows at once.
    tasks = [{"name": f"Step {n}", "ansible.builtin.debug": {"msg": f"step {n}"}} for n in range(20)]
    tasks.append({"name": "Break here", "ansible.builtin.fail": {"msg": "boom"}})
    tasks += [{"name": f"After {n}", "ansible.builtin.debug": {"msg": "never"}} for n in range(5)]
    play = [{"name": "Long then failing", "hosts": "host1", "gather_facts": False, "tasks": tasks}]
    (playbook_dir / "long_fail.yml").write_text(json.dumps(play))
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        submit(broker, group, "broken", "long_fail.yml", "--wait", code=1)
        browser.get(url + "#/job/broken")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "failed", message="not shown failed")
        wait_until(browser, lambda d: "boom" in text_of(d, "#output .k-failed"), message="no failed line")
        visible = (
            "const o = document.getElementById('output'), f = o.querySelector('.k-failed');"
            "const top = f.getBoundingClientRect().top - o.getBoundingClientRect().top;"
            "return o.scrollTop > 0 && top >= 0 && top < o.clientHeight;"
        )
        wait_until(browser, lambda d: d.execute_script(visible), 10, "the failed task is not in view")


def test_a_listen_beyond_loopback_without_a_token_is_refused_at_start(broker: Broker, group: str) -> None:
    command = [EXECUTABLE, "dashboard", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--listen", "0.0.0.0:8470"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "--token" in result.stderr
    assert "0.0.0.0:8470" in result.stderr


def test_a_bad_dashboard_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"mqtt": {"host": "127.0.0.1"}, "dashboard": {"allow_action": True}}))
    command = [EXECUTABLE, "dashboard", "-c", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "dashboard.allow_action" in result.stderr


def test_broker_loss_shows_a_banner_and_the_last_state_until_it_is_back(
    broker: Broker, group: str, worker: str, tmp_path: Path, browser: WebDriver
) -> None:
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        submit(broker, group, "done", "quick.yml", "--wait")
        browser.get(url)
        wait_until(browser, lambda d: job_state(d, "done") == "success")
        assert not browser.find_element("id", "banner").is_displayed()
        broker.stop()
        wait_until(browser, lambda d: d.find_element("id", "banner").is_displayed(), message="no banner")
        assert job_state(browser, "done") == "success"  # the last known state stays
        broker.start()
        wait_until(browser, lambda d: not d.find_element("id", "banner").is_displayed(), 60, "banner stayed")
        submit(broker, group, "after", "quick.yml")
        wait_until(browser, lambda d: job_state(d, "after") == "success", message="no live updates after")


async def _publish_presences(broker: Broker, group: str) -> None:
    now = datetime.now(UTC)
    async with open_client(target_from_url(f"mqtt://127.0.0.1:{broker.port}", group=group)) as client:
        for worker_id, beat in (("fresh", now), ("silent", now - timedelta(minutes=10))):
            presence = {
                "worker_id": worker_id,
                "state": "online",
                "heartbeat_at": beat.isoformat(),
                "heartbeat_interval": 30,
                "capacity": 4,
                "running": 1,
                "queued": 2,
                "jobs_done": 7,
            }
            await client.publish(client.topics.worker(worker_id), json.dumps(presence).encode(), qos=1, retain=True)


def test_a_worker_whose_heartbeats_stopped_looks_stale(
    broker: Broker, group: str, tmp_path: Path, browser: WebDriver
) -> None:
    trio.run(_publish_presences, broker, group)
    classes = "return [...document.querySelectorAll('#workers tbody tr')].map(r => [r.dataset.workerId, r.className]);"
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        browser.get(url)
        wait_until(browser, lambda d: len(d.execute_script(classes)) == 2, message="workers not shown")
        assert dict(browser.execute_script(classes)) == {"fresh": "", "silent": "stale"}
        assert "(stale)" not in text_of(browser, 'tr[data-worker-id="fresh"]')
        row = text_of(browser, 'tr[data-worker-id="fresh"]')
        assert row.split("\t")[2:6] == ["4", "1", "2", "7"]
