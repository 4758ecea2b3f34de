"""`jobs`, `logs` and `status` read finished jobs from the store; without one, `jobs` stays bounded and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from ansible_worker.controller.parser import EXIT_UNAVAILABLE
from testing.broker import Broker
from tests.history.helpers import TOPICS, publish_status, publisher, record, running_archiver, status, wait_until

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")


async def cli(broker: Broker, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [EXECUTABLE, *args, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", TOPICS.group]
    with trio.fail_after(120):
        return await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)


async def test_jobs_logs_and_status_read_the_store(broker: Broker, store_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    async with running_archiver(broker, store_url) as (history, _), publisher(broker) as link:
        for number in range(30):
            state = "failed" if number % 5 == 0 else "success"
            final = status(
                f"job-{number:02d}", state, began=now - timedelta(hours=number), playbook=f"p{number % 2}.yml"
            )
            await publish_status(link, final)
            hosts = ("web3", "db1") if number % 3 == 0 else ("web1",)
            await link.publish(
                TOPICS.record(final["task_id"]), record(final, hosts, f"out {number}\n"), qos=1, retain=True
            )

        async def all_recorded() -> bool:
            return await history.record("job-29") is not None and await history.count() == 30

        await wait_until(all_recorded)
        # The broker forgets them all: whatever the commands show now comes from the store.
        for number in range(30):
            await link.publish(TOPICS.status(f"job-{number:02d}"), b"", qos=1, retain=True)
            await link.publish(TOPICS.record(f"job-{number:02d}"), b"", qos=1, retain=True)

    async def ids(*args: str) -> list[str]:
        found = await cli(broker, "jobs", "--json", "--history", store_url, *args)
        assert found.returncode == 0, found.stderr.decode()
        return [json.loads(line)["task_id"] for line in found.stdout.decode().splitlines()]

    assert await ids() == [f"job-{n:02d}" for n in range(30)]
    assert await ids("--state", "failed", "--since", "12h") == ["job-00", "job-05", "job-10"]
    assert await ids("--host", "web3", "--since", "7d") == [f"job-{n:02d}" for n in range(0, 30, 3)]
    assert await ids("--playbook", "p1.*", "--until", "20h") == [f"job-{n:02d}" for n in range(21, 30, 2)]
    limited = await cli(broker, "jobs", "--json", "--history", store_url, "--limit", "4")
    assert len(limited.stdout.decode().splitlines()) == 4
    assert "showing the newest 4" in limited.stderr.decode()

    logs = await cli(broker, "logs", "job-07", "--history", store_url, "--artifact-dir", str(tmp_path / "art"))
    assert logs.returncode == 0, logs.stderr.decode()
    assert logs.stdout.decode() == "out 7\n"
    assert (tmp_path / "art" / "job-07" / "stdout").read_text() == "out 7\n"
    shown = await cli(broker, "status", "job-05", "--json", "--history", store_url)
    assert shown.returncode == 0, shown.stderr.decode()
    assert json.loads(shown.stdout)["state"] == "failed"


async def test_a_missing_store_is_a_clear_error(broker: Broker, tmp_path: Path) -> None:
    result = await cli(broker, "jobs", "--history", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.returncode == EXIT_UNAVAILABLE
    assert "no history store at" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


async def test_jobs_without_a_store_is_bounded_and_says_so(broker: Broker) -> None:
    now = datetime.now(UTC)
    async with publisher(broker) as link:
        for number in range(300):
            await publish_status(link, status(f"job-{number:03d}", began=now - timedelta(seconds=number)))
    result = await cli(broker, "jobs", "--json", "--limit", "25")
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line)["task_id"] for line in result.stdout.decode().splitlines()]
    assert rows == [f"job-{n:03d}" for n in range(25)]
    assert "showing the newest 25 of at least 300" in result.stderr.decode()
    assert "history.url" in result.stderr.decode()
    host = await cli(broker, "jobs", "--host", "web3")
    assert host.returncode == 2
    assert "--host needs a history store" in host.stderr.decode()
