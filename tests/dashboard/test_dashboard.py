"""The dashboard in a real browser: a broker, a worker process, the dashboard process and headless Chromium."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from ansible_worker.controller.client import open_client, target_from_url
from tests.conftest import Broker, client_for, worker_config
from tests.dashboard.browser import (
    EXECUTABLE,
    axe_problems,
    broker_status,
    cli,
    click,
    dashboard,
    have_chromium,
    job_state,
    open_job,
    process,
    submit,
    text_of,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_chromium(), reason="needs Debian's chromium and chromium-driver"),
]


def post(url: str, headers: dict[str, str], body: bytes = b"{}") -> int:
    request = urllib.request.Request(  # noqa: S310 (our own loopback URL)
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (our own loopback URL)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def get(url: str) -> tuple[int, str]:
    """The status of a GET and, unless it is a stream, its body."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (our own loopback URL)
            streaming = response.headers.get_content_type() == "text/event-stream"
            return int(response.status), "" if streaming else response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:  # the server closed the connection without an answer
        return 0, str(exc)


def wait_for_text(path: Path, text: str, seconds: float = 10) -> str:
    """The file's contents once `text` is in it, within `seconds`."""
    deadline = time.monotonic() + seconds
    while text not in (contents := path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path.name}"
        time.sleep(0.05)
    return contents


def answered(request: Callable[[], int]) -> int:
    """The status code of `request()`, or 0 when the server closed the connection without one."""
    try:
        return request()
    except OSError:
        return 0


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


def test_jobs_are_links_every_control_works_by_keyboard_and_axe_finds_nothing_serious(
    broker: Broker, group: str, worker: str, playbook_dir: Path, tmp_path: Path, browser: WebDriver
) -> None:
    # Long enough output that the output box scrolls; and a worker whose heartbeats stopped.
    tasks = [{"name": f"Step {n}", "ansible.builtin.debug": {"msg": f"step {n} " + "w" * 200}} for n in range(30)]
    play = [{"name": "Long", "hosts": "host1", "gather_facts": False, "tasks": tasks}]
    (playbook_dir / "long.yml").write_text(json.dumps(play))
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
        links = browser.execute_script(
            "return [...document.querySelectorAll('#jobs tbody tr')].map(row => {"
            "  const a = row.querySelector('td.task-id a');"
            "  return [row.dataset.taskId, a && a.getAttribute('href'), a && a.textContent]; });"
        )
        assert sorted(links) == [["done", "#/job/done", "done"], ["going", "#/job/going", "going"]]
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
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
        while focused(browser) != "#/":
            ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
            assert focused(browser) != "body", "Shift+Tab never reached the link to all jobs"
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_until(browser, lambda d: focused(d) == "#/job/done", message="the focus did not come back to the job")
        # A running job's page: the reason and the cancel button, by keyboard only.
        tab_to(browser, "#/job/going")
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_until(browser, lambda d: d.find_elements("id", "cancel-button"), message="no cancel button")
        assert axe_problems(browser) == []
        tab_to(browser, "#cancel-reason")
        ActionChains(browser).send_keys("typed, not clicked", Keys.TAB).perform()
        assert focused(browser) == "#cancel-button"
        ActionChains(browser).send_keys(Keys.ENTER).perform()
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


def test_cancel_from_the_page_and_run_again(
    broker: Broker, group: str, worker: str, tmp_path: Path, browser: WebDriver
) -> None:
    with dashboard(broker, group, tmp_path / "dashboard.log", "--allow-actions") as url:
        browser.get(url)
        wait_until(browser, lambda d: d.find_elements("css selector", f'tr[data-worker-id="{worker}"]'))
        submit(broker, group, "first", "quick.yml", "--wait")
        submit(broker, group, "long", "sleep.yml")
        wait_until(browser, lambda d: job_state(d, "long") == "running", message="the long job never ran")
        open_job(browser, "long")
        browser.find_element("id", "cancel-reason").send_keys("maintenance window closed")
        browser.find_element("id", "cancel-button").click()
        wait_until(browser, lambda d: text_of(d, "#job-state") == "cancelled", message="not shown cancelled")
        status = broker_status(broker, group, "long")
        assert status["state"] == "cancelled"
        assert "maintenance window closed" in json.dumps(status)
        assert "dashboard" in str(status.get("cancelled_by"))

        browser.get(url + "#/job/first")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "success")
        browser.find_element("id", "rerun-button").click()
        wait_until(browser, lambda d: text_of(d, "#job-id") not in ("", "first"), message="no new job page")
        again = text_of(browser, "#job-id")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "success", message="the new job did not succeed")
        assert broker_status(broker, group, again)["state"] == "success"
        assert broker_status(broker, group, again)["playbook"] == "quick.yml"


def test_with_actions_off_there_are_no_buttons_and_the_endpoints_refuse(
    broker: Broker, group: str, worker: str, tmp_path: Path, browser: WebDriver
) -> None:
    token = "a-token-of-enough-length"
    with dashboard(broker, group, tmp_path / "dashboard.log", "--token", token) as url:
        submit(broker, group, "done", "quick.yml", "--wait")
        submit(broker, group, "long", "sleep.yml")
        browser.get(url)
        # The page asks for the token once; a wrong one is refused.
        wait_until(browser, lambda d: d.find_element("id", "token-form").is_displayed())
        browser.find_element("id", "token-input").send_keys("wrong-token-of-length\n")
        wait_until(browser, lambda d: text_of(d, "#token-error") == "wrong token")
        field = browser.find_element("id", "token-input")
        field.clear()
        field.send_keys(token + "\n")
        wait_until(browser, lambda d: job_state(d, "long") == "running", message="no list after the token")
        for task_id in ("long", "done"):
            browser.get(url + "#/job/" + task_id)
            browser.refresh()
            wait_until(browser, lambda d, t=task_id: text_of(d, "#job-id") == t)
            assert not browser.find_elements("css selector", "#cancel-button, #rerun-button, #actions button")
        headers = {"X-Dashboard-Action": "1", "X-Dashboard-Token": token, "Origin": url.rstrip("/")}
        assert post(url + "api/jobs/long/cancel", headers) == 403
        assert post(url + "api/jobs/done/rerun", headers) == 403
        assert post(url + "api/jobs/long/cancel", {"X-Dashboard-Action": "1"}) == 401
        assert broker_status(broker, group, "long")["state"] == "running"


def test_actions_refuse_cross_site_requests(broker: Broker, group: str, worker: str, tmp_path: Path) -> None:
    with dashboard(broker, group, tmp_path / "dashboard.log", "--allow-actions") as url:
        submit(broker, group, "long", "sleep.yml")
        assert post(url + "api/jobs/long/cancel", {}) == 403  # no header a form could not send
        assert post(url + "api/jobs/long/cancel", {"X-Dashboard-Action": "1", "Origin": "http://evil.example"}) == 403
        assert post(url + "api/jobs/long/cancel", {"X-Dashboard-Action": "1", "Host": "evil.example"}) == 403
        assert broker_status(broker, group, "long")["state"] in ("queued", "running")


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


def test_actions_are_signed_with_the_dashboards_key(
    broker: Broker, group: str, playbook_dir: Path, keys: Path, tmp_path: Path
) -> None:
    config = tmp_path / "signed-worker.json"
    worker = json.loads(worker_config(config, broker, playbook_dir, group, worker_id="w1").read_text())
    worker["security"] = {
        "require_signed_tasks": True,
        "trusted_keys": {"alice": str(keys / "alice.pub")},
        "worker_key": str(keys / "worker.key"),
    }
    config.write_text(json.dumps(worker))
    alice = str(keys / "alice.key")
    with (
        process(["run", "-c", str(config)], tmp_path / "worker.log"),
        dashboard(broker, group, tmp_path / "dashboard.log", "--allow-actions", "--signing-key", alice) as url,
    ):
        submit(broker, group, "signed", "quick.yml", "--signing-key", alice, "--wait")
        headers = {"X-Dashboard-Action": "1", "Origin": url.rstrip("/")}
        request = urllib.request.Request(  # noqa: S310 (our own loopback URL)
            url + "api/jobs/signed/rerun", data=b"{}", method="POST", headers=headers
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            assert response.status == 201
            again = json.loads(response.read())["task_id"]
        watched = cli(broker, group, "watch", again, "--json")
        assert watched.returncode == 0, watched.stdout + watched.stderr
        assert broker_status(broker, group, again)["state"] == "success"

        submit(broker, group, "long", "sleep.yml", "--signing-key", alice)
        # The CLI saw the job queued; the dashboard hears the same status a moment later.
        deadline = time.monotonic() + 10
        while (code := post(url + "api/jobs/long/cancel", headers, b'{"reason": "signed stop"}')) == 409:
            assert time.monotonic() < deadline, "the dashboard never heard of the job"
            time.sleep(0.05)
        assert code == 202
        watched = cli(broker, group, "watch", "long", "--json")
        assert watched.returncode == 4, watched.stdout + watched.stderr  # cancelled
        assert broker_status(broker, group, "long")["state"] == "cancelled"
        assert "signed stop" in json.dumps(broker_status(broker, group, "long"))


def rerun(url: str, task_id: str) -> tuple[int, dict[str, str]]:
    """POST run again for `task_id` as the page does; the code and the JSON answer."""
    headers = {"X-Dashboard-Action": "1", "Origin": url.rstrip("/"), "Content-Type": "application/json"}
    request = urllib.request.Request(  # noqa: S310 (our own loopback URL)
        url + f"api/jobs/{task_id}/rerun", data=b"{}", method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (our own loopback URL)
            return int(response.status), dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(json.loads(exc.read()))


async def _publish_signed(broker: Broker, group: str, key: Path, task_id: str, issued: datetime) -> bytes:
    """Publish a quick job that `key` signed at `issued`; the message, as a captured copy to replay."""
    from ansible_worker.protocol.signing import Signer
    from tests.conftest import wait_online

    signer = Signer.from_file(key)
    async with open_client(target_from_url(f"mqtt://127.0.0.1:{broker.port}", group=group)) as client:
        await wait_online(client, "w1")
        job = {"task_id": task_id, "playbook": "quick.yml", "inventory": "inventory.ini"}
        payload = json.dumps(signer.sign(client.topics.tasks, job, now=issued)).encode()
        await client.publish(client.topics.tasks, payload, qos=2)
    return payload


async def _publish_again(broker: Broker, group: str, payload: bytes) -> None:
    async with open_client(target_from_url(f"mqtt://127.0.0.1:{broker.port}", group=group)) as client:
        await client.publish(client.topics.tasks, payload, qos=2)


def test_run_again_signs_only_a_request_that_was_fresh_when_the_dashboard_heard_it(
    broker: Broker, group: str, playbook_dir: Path, keys: Path, tmp_path: Path
) -> None:
    """A captured request its key signed long ago, replayed to the dashboard, is not signed again."""
    config = tmp_path / "signed-worker.json"
    worker = json.loads(worker_config(config, broker, playbook_dir, group, worker_id="w1").read_text())
    worker["security"] = {
        "require_signed_tasks": True,
        "trusted_keys": {"alice": str(keys / "alice.pub")},
        "worker_key": str(keys / "worker.key"),
    }
    config.write_text(json.dumps(worker))
    # The dashboard's own age rule: a request is fresh for 15 s after it was signed (long enough for
    # a loaded machine to hear the fresh one in time, short enough to wait out).
    dashboard_config = tmp_path / "dashboard.json"
    dashboard_config.write_text(json.dumps({"mqtt": {"host": "127.0.0.1"}, "security": {"max_task_age": 15}}))
    alice = keys / "alice.key"
    with process(["run", "-c", str(config)], tmp_path / "worker.log"):
        # A job alice signed a minute ago (the workers accept 300 s) ran before the dashboard started.
        captured = trio.run(_publish_signed, broker, group, alice, "old", datetime.now(UTC) - timedelta(seconds=60))
        watched = cli(broker, group, "watch", "old", "--json")
        assert watched.returncode == 0, watched.stdout + watched.stderr
        options = ("--allow-actions", "--signing-key", str(alice), "-c", str(dashboard_config))
        with dashboard(broker, group, tmp_path / "dashboard.log", *options) as url:
            # Someone who kept a copy sends it again: the group ignores it, the dashboard hears it first.
            trio.run(_publish_again, broker, group, captured)
            deadline = time.monotonic() + 10
            while "before this dashboard started" in (answer := rerun(url, "old"))[1].get("error", ""):
                assert time.monotonic() < deadline, "the dashboard never heard the copy"
                time.sleep(0.05)
            code, body = answer
            assert code == 409, body
            assert body["error"].startswith(
                "job old: its request was too old to run when this dashboard heard it (expired: issued 6"
            ), body
            assert body["error"].endswith("more than security.max_task_age (15s)); it is not signed again"), body

            # A request heard while fresh can be run again later, once its job has ended.
            issued = datetime.now(UTC)
            trio.run(_publish_signed, broker, group, alice, "fresh", issued)
            watched = cli(broker, group, "watch", "fresh", "--json")
            assert watched.returncode == 0, watched.stdout + watched.stderr
            time.sleep(max(0.0, (issued + timedelta(seconds=16) - datetime.now(UTC)).total_seconds()))
            code, body = rerun(url, "fresh")
            assert code == 201, body
            again = cli(broker, group, "watch", body["task_id"], "--json")
            assert again.returncode == 0, again.stdout + again.stderr
        assert broker_status(broker, group, "old")["state"] == "success"


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


# README's figures: the dashboard keeps this many jobs, and statuses up to this size whole.
KEPT_JOBS = 2000
KEPT_STATUS_BYTES = 16 * 1024


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
