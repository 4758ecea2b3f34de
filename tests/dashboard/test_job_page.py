"""A job's page in a real browser: which host failed, on which task and why; where the time went; live; the list."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import trio
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.conftest import REPO, Broker, client_for
from tests.dashboard.browser import (
    BROWSER_TESTS,
    axe_problems,
    cli,
    click,
    dashboard,
    get_json,
    job_state,
    submit,
    text_of,
    wait_until,
)
from tests.dashboard.events import Events

pytestmark = BROWSER_TESTS
# The screenshots README and docs/dashboard.md show: the suite takes them of the jobs it runs.
DOCS = REPO / "docs"

ROWS = "return [...document.querySelectorAll(arguments[0])].map(r => [...r.children].map(c => c.innerText.trim()));"
RECORD_SHOWN = "return window.dashboardTimings && window.dashboardTimings.source === 'record';"


def deploy_playbook(playbook_dir: Path, tmp_path: Path) -> None:
    """Two hosts: a slow step, a changed file with a diff, and a failure on host2 only."""
    tasks = [
        {"name": "Prepare", "ansible.builtin.debug": {"msg": "ready"}},
        {"name": "Check disk", "ansible.builtin.command": "df -h /", "changed_when": False},
        {
            "name": "Write the config",
            "ansible.builtin.copy": {"content": "port: 8080\n", "dest": f"{tmp_path}/app-{{{{ inventory_hostname }}}}"},
            "diff": True,
        },
        {"name": "Wait for the service", "ansible.builtin.command": "sleep 2"},
        {
            "name": "Stop if the disk is full",
            "ansible.builtin.fail": {"msg": "disk /var is 97% full"},
            "when": "inventory_hostname == 'host2'",
        },
        {"name": "Report", "ansible.builtin.debug": {"msg": "done"}},
    ]
    play = [{"name": "Deploy", "hosts": "all", "gather_facts": False, "tasks": tasks}]
    (playbook_dir / "deploy.yml").write_text(json.dumps(play))


def cells(driver: WebDriver) -> dict[str, list[str]]:
    """Each task's name and the status of each of its result cells, as the page shows them."""
    script = (
        "return [...document.querySelectorAll('#tasks tbody tr[data-task]')].map(r => ["
        "  r.querySelector('.task-name .name').textContent,"
        "  [...r.querySelectorAll('button.cell')].map(b => b.getAttribute('aria-label'))]);"
    )
    return {name: labels for name, labels in driver.execute_script(script)}


def set_dark(driver: WebDriver, dark: bool) -> None:
    scheme = "dark" if dark else "light"
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )


def no_sideways_scroll(driver: WebDriver) -> bool:
    """Whether the page as a whole fits the window's width (wide tables scroll in their own box)."""
    return bool(driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1;"))


def check_hosts_and_why_one_failed(driver: WebDriver) -> None:
    """The hosts, the one that failed first with each one's counts; which task failed and why."""
    # The host that failed comes first, with the counts of each host.
    hosts = driver.execute_script(ROWS, "#hosts tbody tr")
    header = ["ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored"]
    counts = {row[0]: dict(zip(header, map(int, row[1:8]), strict=True)) for row in hosts}
    assert [row[0] for row in hosts] == ["host2", "host1"]
    assert counts["host2"] == {**dict.fromkeys(header, 0), "ok": 2, "changed": 2, "failed": 1}
    assert counts["host1"] == {**dict.fromkeys(header, 0), "ok": 3, "changed": 2, "skipped": 1}
    # Within a glance: which host, which task, why.
    failed = text_of(driver, "#failures")
    assert "host2 failed on “Stop if the disk is full”" in failed
    assert "disk /var is 97% full" in failed
    assert "disk /var is 97% full" in text_of(driver, "#job-error")
    assert text_of(driver, "#job-summary").startswith("Failed after ")


def check_tasks_their_results_and_times(driver: WebDriver, url: str) -> None:
    """Each task with each host's result, in order; a time for each, the slowest marked; a bar per task."""
    # Each task with each host's result, in order, and a time; the slow one is marked.
    shown = cells(driver)
    assert list(shown) == [
        "Prepare",
        "Check disk",
        "Write the config",
        "Wait for the service",
        "Stop if the disk is full",
        "Report",
    ]
    assert shown["Stop if the disk is full"] == ["host1: skipped", "host2: failed"]
    assert shown["Report"] == ["host1: ok", "host2: no result yet"]
    times = driver.execute_script(
        "return [...document.querySelectorAll('#tasks tbody tr[data-task]')]"
        ".map(r => [r.querySelector('.task-duration .time').textContent, r.classList.contains('slow')]);"
    )
    assert all(text for text, _ in times), times
    tasks = get_json(url + "api/jobs/deploy-web/page")[1]["tasks"]
    spans = [task["end"] - task["start"] for task in tasks]
    assert times[spans.index(max(spans))][1], f"the slowest task is not marked: {times}"
    assert not times[spans.index(min(spans))][1], f"the quickest task is marked: {times}"
    # The timeline: a bar per task.
    assert driver.execute_script("return document.querySelectorAll('#timeline g.tl-row rect').length;") == 6


def check_a_result_whole_and_by_keyboard(driver: WebDriver) -> None:
    """The failed result in its dialog; Escape closes it, and the arrow keys move along the results."""
    # The failed result, whole: its message, and all of it as JSON.
    click(driver, "#tasks button.cell-failed")
    wait_until(driver, lambda d: "disk /var is 97% full" in text_of(d, "#result-body"), message="no result")
    assert text_of(driver, "#result-title") == "Stop if the disk is full on host2"
    assert "The whole result (JSON)" in text_of(driver, "#result-body")
    DOCS.mkdir(exist_ok=True)
    driver.save_screenshot(str(DOCS / "dashboard-result.png"))
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    wait_until(driver, lambda d: not d.execute_script("return document.getElementById('result-dialog').open;"))
    # Keyboard: the focus went back to the cell, and the arrow keys move along the results.
    wait_until(driver, lambda d: focused_label(d) == "host2: failed", message="focus is not on host2: failed")
    ActionChains(driver).send_keys(Keys.ARROW_LEFT).perform()
    wait_until(driver, lambda d: focused_label(d) == "host1: skipped", message="focus is not on host1: skipped")
    ActionChains(driver).send_keys(Keys.ARROW_UP, Keys.ARROW_UP, Keys.ENTER).perform()
    wait_until(driver, lambda d: "+port: 8080" in text_of(d, "#result-body"), message="no diff")
    assert text_of(driver, "#result-title") == "Write the config on host1"
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()


def check_the_host_filter_and_the_output(driver: WebDriver) -> None:
    """Filtered to one host, only its results and lines; Ansible's output searched, a task linked to its place."""
    # Filtered to one host: only its results, and only its lines of output.
    Select(driver.find_element("id", "job-host")).select_by_visible_text("host1")
    wait_until(driver, lambda d: cells(d)["Report"] == ["host1: ok"], message="the host filter did nothing")
    assert all(len(labels) == 1 for labels in cells(driver).values())
    assert "host2" not in text_of(driver, "#output")
    assert "ok: [host1]" in text_of(driver, "#output")
    Select(driver.find_element("id", "job-host")).select_by_visible_text("all hosts")
    # Ansible's own output: search it, and a task links to its place in it.
    driver.find_element("id", "output-search").send_keys("PLAY RECAP")
    wait_until(driver, lambda d: text_of(d, "#output").startswith("PLAY RECAP"), message="search found nothing")
    assert text_of(driver, "#output-count").startswith("1 of ")
    driver.find_element("id", "output-search").clear()
    driver.find_element("id", "output-search").send_keys(" ")
    click(driver, '#tasks tr[data-task="3"] td.go button')
    wait_until(driver, lambda d: text_of(d, "#output .target").startswith("TASK [Wait for the service]"))
    # No set_stats: its section is not shown.
    assert not driver.find_element("id", "stats-section").is_displayed()


def check_dark_mode_and_a_phone(driver: WebDriver) -> None:
    """Dark mode and a phone's width: nothing axe finds serious, nothing wider than the screen."""
    # Dark mode, and a phone's width.
    set_dark(driver, True)
    driver.execute_script("window.scrollTo(0, 0);")
    assert axe_problems(driver) == []
    driver.set_window_size(390, 844)
    wait_until(driver, no_sideways_scroll, message="the page is wider than a phone")
    driver.execute_script("window.scrollTo(0, 0);")
    driver.save_screenshot(str(DOCS / "dashboard-phone-dark.png"))
    assert axe_problems(driver) == []


def test_a_failed_job_shows_which_host_failed_on_which_task_and_why(
    broker: Broker, group: str, worker: str, playbook_dir: Path, tmp_path: Path, browser: WebDriver
) -> None:
    deploy_playbook(playbook_dir, tmp_path)
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        submit(broker, group, "deploy-web", "deploy.yml", "--wait", code=1)
        browser.set_window_size(1280, 1100)
        browser.get(url + "#/job/deploy-web")
        wait_until(browser, lambda d: d.execute_script(RECORD_SHOWN), message="the record was never shown")
        check_hosts_and_why_one_failed(browser)
        check_tasks_their_results_and_times(browser, url)
        check_a_result_whole_and_by_keyboard(browser)
        # The page as a person opening the failed job sees it.
        browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
        browser.save_screenshot(str(DOCS / "dashboard-job.png"))
        assert axe_problems(browser) == []
        check_the_host_filter_and_the_output(browser)
        check_dark_mode_and_a_phone(browser)


def test_set_stats_data_is_shown_under_its_own_name(
    broker: Broker, group: str, worker: str, tmp_path: Path, browser: WebDriver
) -> None:
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        submit(broker, group, "stats", "stats.yml", "--wait")
        browser.get(url + "#/job/stats")
        wait_until(browser, lambda d: d.execute_script(RECORD_SHOWN))
        assert text_of(browser, "#stats-heading") == "Data from the playbook (set_stats)"
        assert json.loads(text_of(browser, "#job-output-vars")) == json.loads(
            json.dumps(json.loads(cli(broker, group, "status", "stats", "--json").stdout)["output"])
        )


def counts_shown(driver: WebDriver) -> dict[str, int]:
    script = (
        "const c = {}; for (const n of document.querySelectorAll('#job-counts [class^=n-]'))"
        " c[n.className.slice(2)] = Number(n.textContent.replace(/,/g, '')); return c;"
    )
    return dict(driver.execute_script(script))


def test_a_running_jobs_counts_hosts_and_tasks_change_without_a_reload(
    broker: Broker, group: str, worker: str, playbook_dir: Path, browser: WebDriver, tmp_path: Path
) -> None:
    steps = [{"name": f"Step {n}", "ansible.builtin.command": "sleep 1"} for n in range(6)]
    play = [{"name": "Slowly", "hosts": "all", "gather_facts": False, "tasks": steps}]
    (playbook_dir / "slowly.yml").write_text(json.dumps(play))
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        browser.get(url)
        wait_until(browser, lambda d: "online" in text_of(d, f'tr[data-worker-id="{worker}"]'), message="no worker")
        submit(broker, group, "slowly", "slowly.yml")
        wait_until(browser, lambda d: job_state(d, "slowly") == "running", message="never shown running")
        browser.get(url + "#/job/slowly")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "running")
        browser.execute_script("window.notReloaded = true;")
        rows = "return document.querySelectorAll('#tasks tbody tr[data-task]').length;"
        seen = browser.execute_script(rows)
        before = counts_shown(browser)
        wait_until(browser, lambda d: d.execute_script(rows) > seen, 60, "no new task row")
        wait_until(browser, lambda d: counts_shown(d)["changed"] > before["changed"], 60, "the counts did not change")
        wait_until(
            browser,
            lambda d: sum(int(row[2]) for row in d.execute_script(ROWS, "#hosts tbody tr")) >= 2,
            60,
            "the hosts' counts did not change",
        )
        assert browser.find_element("id", "follow").is_displayed()
        wait_until(browser, lambda d: text_of(d, "#job-state") == "success", 60, "never shown success")
        wait_until(browser, lambda d: d.execute_script(RECORD_SHOWN), message="the record was never shown")
        assert browser.execute_script("return window.notReloaded === true;")
        assert counts_shown(browser)["changed"] == 12
        assert browser.execute_script(rows) == 6


def test_a_fifty_host_forty_task_job_renders_whole_and_stays_usable(
    broker: Broker, group: str, worker: str, playbook_dir: Path, tmp_path: Path, browser: WebDriver
) -> None:
    for name in ("heavy.yml", "fifty.ini"):
        shutil.copy(REPO / "examples" / "playbooks" / name, playbook_dir / name)
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        result = cli(broker, group, "submit", "heavy.yml", "-i", "fifty.ini", "--task-id", "heavy")
        assert result.returncode == 0, result.stderr
        browser.set_window_size(1280, 1500)
        browser.get(url + "#/job/heavy")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "success", 300, "the 2,000 results never came")
        wait_until(browser, lambda d: d.execute_script(RECORD_SHOWN), message="the record was never shown")
        # Opened afresh: from the start of the navigation to the record's page drawn, three times.
        drawn = []
        for _ in range(3):
            browser.get(url)
            browser.get(url + "#/job/heavy")
            browser.refresh()
            wait_until(browser, lambda d: d.execute_script(RECORD_SHOWN), message="the record was never shown")
            drawn.append(browser.execute_script("return window.dashboardTimings.drawn;"))
        assert browser.execute_script("return document.querySelectorAll('#tasks button.cell-ok').length;") == 2000
        assert len(cells(browser)) == 40
        assert browser.execute_script("return document.querySelectorAll('#timeline g.tl-row').length;") == 40
        # Responsive: a result opens, the output is searched and scrolled, without a long wait.
        browser.execute_script(
            "window.longTasks = []; new PerformanceObserver(l => window.longTasks.push(...l.getEntries().map(e => e.duration)))"
            ".observe({type: 'longtask'});"
        )
        started = time.monotonic()
        click(browser, '#tasks tr[data-task="39"] button.cell')
        wait_until(browser, lambda d: "step 39" in text_of(d, "#result-body"), message="no result")
        opened = time.monotonic() - started
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()
        started = time.monotonic()
        browser.find_element("id", "output-search").send_keys("host49")
        wait_until(browser, lambda d: text_of(d, "#output").startswith("ok: [host49]"), message="search found nothing")
        searched = time.monotonic() - started
        browser.execute_script("const o = document.getElementById('output'); o.scrollTop = o.scrollHeight / 2;")
        wait_until(browser, lambda d: "host49" in text_of(d, "#output"))
        long_tasks = browser.execute_script("return window.longTasks;")
        browser.find_element("id", "output-search").clear()
        browser.execute_script("window.scrollTo(0, 0);")
        browser.save_screenshot(str(DOCS / "dashboard-heavy.png"))
        assert axe_problems(browser) == []
        with urllib.request.urlopen(url + "api/jobs/heavy/page", timeout=30) as response:  # noqa: S310 (loopback)
            page_bytes = len(response.read())
    figures = {
        "page_kib": round(page_bytes / 1024),
        "drawn_ms": [round(value) for value in drawn],
        "result_opened_s": round(opened, 3),
        "search_s": round(searched, 3),
        "long_tasks_ms": [round(value) for value in long_tasks],
    }
    # How fast is for benchmarks/bench_dashboard.py to measure; here, that it all works.
    print(f"50 hosts x 40 tasks: {figures}")


def test_the_page_and_result_endpoints_check_what_they_are_given(
    broker: Broker, group: str, worker: str, playbook_dir: Path, tmp_path: Path
) -> None:
    deploy_playbook(playbook_dir, tmp_path)
    token = "a-token-of-enough-length"
    with dashboard(broker, group, tmp_path / "dashboard.log", "--token", token) as url:
        submit(broker, group, "deploy-web", "deploy.yml", "--wait", code=1)
        assert get_json(url + "api/jobs/deploy-web/page")[0] == 401
        assert get_json(url + "api/jobs/deploy-web/results/0/0")[0] == 401
        assert get_json(url + "api/jobs?host=host1")[0] == 401
        auth = f"?token={token}"
        code, page = get_json(url + "api/jobs/deploy-web/page" + auth)
        assert code == 200
        assert page["source"] == "record"
        assert len(page["tasks"]) == 6
        for bad in ("99/0", "0/99", "-1/0", "x/0", "0/1.5", "99999999999999999999999/0"):
            assert get_json(url + f"api/jobs/deploy-web/results/{bad}" + auth)[0] == 404, bad
        assert get_json(url + "api/jobs/nope/page" + auth)[0] == 404
        assert get_json(url + "api/jobs/%2B/page" + auth)[0] == 404
        assert get_json(url + f"api/jobs?host=&token={token}")[0] == 400
        assert get_json(url + f"api/jobs?host={'h' * 300}&token={token}")[0] == 400
        code, found = get_json(url + f"api/jobs?host=HOST2&token={token}")
        assert (code, found["task_ids"]) == (200, ["deploy-web"])


async def _publish_timed_job(broker: Broker, group: str, took: list[float]) -> None:
    """A running job of one host whose tasks took these times, one after the other."""
    events = Events()
    events.add("playbook_on_play_start", 0, play="Timed", play_uuid="p")
    at = 0.0
    for index, seconds in enumerate(took):
        events.task(f"Step {index}", at, f"t{index}")
        at += seconds
        events.result("ok", "h1", at, seconds, f"t{index}")
    async with client_for(broker, group) as client:
        status = {"task_id": "timed", "state": "running", "playbook": "timed.yml"}
        await client.publish(client.topics.status("timed"), json.dumps(status).encode(), qos=1, retain=True)
        for event in events.items:
            await client.publish(client.topics.events("timed"), json.dumps(event).encode(), qos=1)


def test_the_slowest_task_is_marked_when_others_were_slow_too(
    broker: Broker, group: str, tmp_path: Path, browser: WebDriver
) -> None:
    # As a loaded machine ran the failed job's playbook: the slowest is less than twice the median.
    took = [0.11, 2.5, 4.5, 2.8, 0.07, 0.04]
    marked = (
        "return [...document.querySelectorAll('#tasks tbody tr[data-task]')].map(r => r.classList.contains('slow'));"
    )
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        browser.get(url + "#/job/timed")
        trio.run(_publish_timed_job, broker, group, took)
        wait_until(browser, lambda d: len(d.execute_script(marked)) == len(took), message="the tasks never came")
        wait_until(
            browser, lambda d: d.execute_script(marked)[took.index(max(took))], message="the slowest is not marked"
        )
        assert not any(d for d, seconds in zip(browser.execute_script(marked), took, strict=True) if seconds < 1)


def focused_label(driver: WebDriver) -> str:
    """The accessible name of the element that has the focus now."""
    return str(driver.execute_script("return document.activeElement.getAttribute('aria-label');"))
