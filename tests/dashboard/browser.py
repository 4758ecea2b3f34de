"""Helpers for the dashboard's browser tests: the processes a user starts, and a headless system Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from testing.ports import free_port, wait_listening
from tests.conftest import Broker

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


def have_chromium() -> bool:
    """Whether the Debian chromium and chromium-driver packages are installed."""
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


# The marks of every test that drives Chromium: slow, and skipped where there is none.
BROWSER_TESTS = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_chromium(), reason="needs Debian's chromium and chromium-driver"),
]


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile, driven by the system chromedriver."""
    profile = tempfile.mkdtemp(prefix="dashboard-browser-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def axe_problems(driver: WebDriver) -> list[str]:
    """What axe-core finds serious or critical on the page as it is now: one line per rule and element.

    axe-core comes from npm, installed by the nox session (its path in `AXE_CORE_SCRIPT`), and is
    injected into the page the test has open.
    """
    location = os.environ.get("AXE_CORE_SCRIPT")
    assert location, "AXE_CORE_SCRIPT is not set: run the tests through nox (nox -s tests)"
    if not driver.execute_script("return typeof window.axe === 'object';"):
        driver.execute_script(Path(location).read_text())
    driver.set_script_timeout(60)
    results = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(done, (error) => done({error: String(error)}));"
    )
    assert "error" not in results, results
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']} at {node['target']}"
        for violation in results["violations"]
        if violation["impact"] in ("serious", "critical")
        for node in violation["nodes"]
    ]


def wait_until(driver: WebDriver, condition: Any, seconds: float = 30, message: str = "") -> Any:
    """Poll the page (not the server) until `condition(driver)` is truthy, for at most `seconds`."""
    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition, message)


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; fail if `process` exits first."""
    wait_listening(
        port,
        seconds=seconds,
        failed=lambda: None if process.poll() is None else f"the dashboard exited with {process.returncode}",
    )


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ansible-worker ARGS` with its output in `log`; SIGTERM (then SIGKILL) at the end."""
    with log.open("ab") as output:
        child = subprocess.Popen([EXECUTABLE, *args], stdout=output, stderr=subprocess.STDOUT)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@contextmanager
def dashboard(broker: Broker, group: str, log: Path, *extra: str) -> Iterator[str]:
    """A running `ansible-worker dashboard` on a free loopback port; its URL."""
    port = free_port()
    args = ["dashboard", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group]
    with process([*args, "--listen", f"127.0.0.1:{port}", *extra], log) as child:
        wait_for_port(port, child)
        yield f"http://127.0.0.1:{port}/"
        # Shutdown is cancellation: SIGTERM ends it cleanly, open streams and all.
        child.terminate()
        assert child.wait(timeout=15) == 0, log.read_text()[-3000:]
        assert f"dashboard at http://127.0.0.1:{port}/" in log.read_text()


def cli(broker: Broker, group: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A controller command, as a user types it."""
    command = [EXECUTABLE, args[0], "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group, *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def broker_status(broker: Broker, group: str, task_id: str) -> dict[str, Any]:
    """The status the broker holds for a job, read with `ansible-worker status --json`."""
    result = cli(broker, group, "status", task_id, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def text_of(driver: WebDriver, css: str) -> str:
    """The text of the first element matching `css` now, or "" when there is none.

    Read in the page in one step: the list is redrawn as changes arrive, so an element
    looked up first and read later may be gone.
    """
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
    return str(driver.execute_script(script, css))


def click(driver: WebDriver, css: str) -> None:
    """Click the first element matching `css`, found and clicked in one step (see `text_of`)."""
    assert driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", css
    ), f"nothing to click at {css}"


def job_state(driver: WebDriver, task_id: str) -> str:
    """The state the job list shows for a job, or "" while it shows none."""
    return text_of(driver, f'tr[data-task-id="{task_id}"] .job-state')


def submit(broker: Broker, group: str, task_id: str, playbook: str = "quick.yml", *extra: str, code: int = 0) -> None:
    """`ansible-worker submit PLAYBOOK -i inventory.ini --task-id TASK_ID ...`, which must exit with `code`."""
    result = cli(broker, group, "submit", playbook, "-i", "inventory.ini", "--task-id", task_id, *extra)
    assert result.returncode == code, result.stdout + result.stderr


def open_job(driver: WebDriver, task_id: str) -> None:
    """Click a job's row in the list and wait for its page."""
    click(driver, f'tr[data-task-id="{task_id}"]')
    wait_until(driver, lambda d: text_of(d, "#job-id") == task_id, message="the job page did not open")


def get_json(url: str) -> tuple[int, Any]:
    """The status code of a GET and its JSON answer (None when it is not JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (our own loopback URL)
            body = response.read()
            code = int(response.status)
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), int(exc.code)
    try:
        return code, json.loads(body)
    except ValueError:
        return code, None


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
