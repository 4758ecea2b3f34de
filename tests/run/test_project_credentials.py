"""A private project over SSH: the worker's key file and known hosts, against a real sshd on a free loopback port."""

from __future__ import annotations

import getpass
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.ports import free_port
from testing.sshd import make_key, ssh_hosts
from tests.run.runs import open_runs
from tests.run.test_job_sources import JOB, Origin


@dataclass
class SshServer:
    port: int
    client_key: Path
    known_hosts: Path


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path)


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[SshServer]:
    """sshd for this user only, by key only, on 127.0.0.1 and a free port (the shared test servers)."""
    client_key = tmp_path / "client_key"
    public = make_key(client_key)
    async with ssh_hosts(tmp_path / "hosts", ["git"], [public]) as (host,):
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(host.known_hosts_line + "\n")
        yield SshServer(host.port, client_key, known_hosts)


async def test_private_project_over_ssh_with_a_key_file(origin: Origin, sshd: SshServer, tmp_path: Path) -> None:
    commit = origin.commit("private")
    url = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}{origin.bare}"
    strangers = tmp_path / "no_known_hosts"
    strangers.write_text("")
    projects = {
        "private": {"url": url, "key_file": sshd.client_key, "known_hosts": sshd.known_hosts},
        "unknown-host": {"url": url, "key_file": sshd.client_key, "known_hosts": strangers},
    }
    async with open_runs(tmp_path / "seed", projects=projects, state_dir=tmp_path / "state") as runs:
        ran = await runs.submit({"task_id": "by-key", **JOB, "project": "private"})
        refused = await runs.submit({"task_id": "strict", **JOB, "project": "unknown-host"})
    assert ran["state"] == "success", ran["error_message"]
    assert (ran["project"], ran["revision"]) == ("private", commit)
    assert ran["output"]["after"] == "private"
    assert refused["state"] == "failed"
    assert refused["error_message"].startswith("fetch of project 'unknown-host' failed (exit 128): ")
    assert "Host key verification failed" in refused["error_message"]
    # No secret in what the worker published: the key's path is configuration, its content never sent.
    assert sshd.client_key.read_text().splitlines()[1] not in str(ran)


async def test_a_password_in_a_project_url_never_reaches_a_status_or_the_log(
    origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ansible_worker.run.sources.git")
    origin.commit("one")
    # Nothing listens there: git fails, naming the URL it tried.
    url = f"http://deploy:s3cret-token@127.0.0.1:{free_port()}/site.git"
    async with open_runs(tmp_path / "seed", projects={"site": {"url": url}}, state_dir=tmp_path / "state") as runs:
        final = await runs.submit({"task_id": "pw", **JOB, "project": "site"})
    assert final["state"] == "failed"
    assert final["error_message"].startswith("fetch of project 'site' failed (exit 128): ")
    assert "s3cret-token" not in str(runs.sinks.statuses["pw"])
    fetching = [record.getMessage() for record in caplog.records if "fetching" in record.getMessage()]
    assert fetching == [f"project site: fetching http://deploy:***@127.0.0.1:{url.rsplit(':', 1)[1]}"]
