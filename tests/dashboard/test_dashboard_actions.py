"""The dashboard's actions in a real browser and over HTTP: cancel, run again, who may, and how they are signed."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
from selenium.webdriver.remote.webdriver import WebDriver

from ansible_worker.controller.client import open_client, target_from_url
from tests.conftest import Broker, worker_config
from tests.dashboard.browser import (
    BROWSER_TESTS,
    broker_status,
    cli,
    dashboard,
    job_state,
    open_job,
    post,
    process,
    submit,
    text_of,
    wait_until,
)

pytestmark = BROWSER_TESTS


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


def signed_worker_config(tmp_path: Path, broker: Broker, playbook_dir: Path, group: str, keys: Path) -> Path:
    """The config file of worker `w1`, which runs only what alice signed and signs its claims with its own key."""
    config = tmp_path / "signed-worker.json"
    worker = json.loads(worker_config(config, broker, playbook_dir, group, worker_id="w1").read_text())
    worker["security"] = {
        "require_signed_tasks": True,
        "trusted_keys": {"alice": str(keys / "alice.pub")},
        "worker_key": str(keys / "worker.key"),
    }
    config.write_text(json.dumps(worker))
    return config


def test_actions_are_signed_with_the_dashboards_key(
    broker: Broker, group: str, playbook_dir: Path, keys: Path, tmp_path: Path
) -> None:
    config = signed_worker_config(tmp_path, broker, playbook_dir, group, keys)
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
    config = signed_worker_config(tmp_path, broker, playbook_dir, group, keys)
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
            # Signed 60 s before the dashboard started; how much older when it heard the copy depends on the machine.
            assert re.match(
                r"job old: its request was too old to run when this dashboard heard it \(expired: issued \d+s ago",
                body["error"],
            ), body
            assert int(re.findall(r"issued (\d+)s ago", body["error"])[0]) >= 60, body
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
