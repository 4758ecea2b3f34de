"""Measure the dashboard in a real browser: status-to-screen latency, first page with many jobs, its memory.

Starts its own Mosquitto on a free loopback port, publishes retained job statuses, runs
`ansible-worker dashboard` and a headless system Chromium, and times, side by side in the
same run, one `ansible-playbook` run of a one-task playbook for scale. Prints the figures and
writes them to bench_dashboard.json beside this file.

    python benchmarks/bench_dashboard.py [--jobs 1000] [--samples 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

# The checkout's top directory: what the benchmarks share with the tests (`testing`) is there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ansible_worker.controller.client import Client, open_client, target_from_url
from testing.broker import Broker
from testing.ports import free_port, wait_listening

BIN = Path(sys.executable).parent
GROUP = "bench"
RESULTS = Path(__file__).with_name("bench_dashboard.json")
PLAYBOOK = "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - ansible.builtin.debug: {msg: hi}\n"
# Records when the watched row's "ok" count changes, by the page's own clock (epoch ms).
OBSERVE = """
window.seen = [];
const body = document.querySelector('#jobs tbody');
new MutationObserver(() => {
  const count = body.querySelector('tr[data-task-id="watched"] .n-ok');
  if (count) window.seen.push([performance.timeOrigin + performance.now(), count.textContent]);
}).observe(body, {childList: true, subtree: true, characterData: true});
"""


@contextmanager
def running(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield child
    finally:
        child.terminate()
        child.wait(timeout=15)


@contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def status(task_id: str, created: datetime, state: str, ok: int) -> bytes:
    return json.dumps(
        {
            "task_id": task_id,
            "state": state,
            "playbook": "site.yml",
            "worker_id": "w1",
            "created_at": created.isoformat(),
            "tasks_ok": ok,
        }
    ).encode()


async def publish_jobs(port: int, jobs: int) -> None:
    """Retained statuses of `jobs` finished jobs and of the one whose changes are timed."""
    async with open_client(target_from_url(f"mqtt://127.0.0.1:{port}", group=GROUP)) as client:
        start = datetime.now(UTC) - timedelta(days=1)
        for index in range(jobs):
            payload = status(f"job-{index:05d}", start + timedelta(seconds=index), "success", 1)
            await client.publish(client.topics.status(f"job-{index:05d}"), payload, qos=1, retain=True)
        await client.publish(
            client.topics.status("watched"), status("watched", datetime.now(UTC), "running", 0), qos=1, retain=True
        )


async def publish_change(client: Client, ok: int) -> float:
    """Publish the watched job's next count; the epoch ms the broker acknowledged it."""
    payload = status("watched", datetime.now(UTC), "running", ok)
    before = time.time() * 1000
    await client.publish(client.topics.status("watched"), payload, qos=1, retain=True)
    # The middle of the round trip to the broker: when it had the message, near enough.
    return (before + time.time() * 1000) / 2


def seen_at(driver: WebDriver, ok: int, seconds: float = 10) -> float:
    def found(d: WebDriver) -> Any:
        for at, text in d.execute_script("return window.seen;"):
            if text == str(ok):
                return at
        return None

    return float(WebDriverWait(driver, seconds, poll_frequency=0.01).until(found))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ansible_direct(directory: Path) -> float:
    playbook = directory / "one.yml"
    playbook.write_text(PLAYBOOK)
    started = time.monotonic()
    subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    broker, web = Broker(work), free_port()
    port = broker.port
    try:
        broker.start()
        try:
            trio.run(publish_jobs, port, args.jobs)
            command = [
                str(BIN / "ansible-worker"),
                "dashboard",
                "--broker",
                f"mqtt://127.0.0.1:{port}",
                "--group",
                GROUP,
                "--listen",
                f"127.0.0.1:{web}",
            ]
            with running(command, work / "dashboard.log") as dashboard, chromium(work / "profile") as driver:
                wait_listening(web, seconds=20)
                started = time.monotonic()
                driver.get(f"http://127.0.0.1:{web}/")
                WebDriverWait(driver, 30, poll_frequency=0.01).until(
                    lambda d: d.execute_script("return document.querySelectorAll('#jobs tbody tr').length >= 50")
                )
                first_page = time.monotonic() - started
                driver.execute_script(OBSERVE)
                latencies = trio.run(measure_latency, port, driver, args.samples)
                rss = rss_kib(dashboard.pid)
            direct = ansible_direct(work)
        finally:
            broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "jobs": args.jobs,
        "samples": args.samples,
        "status_to_browser_ms_median": round(statistics.median(latencies), 1),
        "status_to_browser_ms_p90": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))], 1),
        "first_page_seconds": round(first_page, 3),
        "dashboard_rss_mib": round(rss / 1024, 1),
        "ansible_playbook_one_task_seconds": round(direct, 3),
    }
    for key, value in figures.items():
        print(f"{key:36} {value}")
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


async def measure_latency(port: int, driver: WebDriver, samples: int) -> list[float]:
    latencies = []
    async with open_client(target_from_url(f"mqtt://127.0.0.1:{port}", group=GROUP)) as client:
        for ok in range(1, samples + 1):
            published = await publish_change(client, ok)
            # The browser is polled from a worker thread: selenium's calls block.
            seen = await trio.to_thread.run_sync(seen_at, driver, ok)
            latencies.append(seen - published)
    return latencies


if __name__ == "__main__":
    main()
