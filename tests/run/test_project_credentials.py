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
from tests.conftest import Broker, make_settings, open_controller, running_worker
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


async def test_private_project_over_ssh_with_a_key_file(
    broker: Broker, origin: Origin, sshd: SshServer, tmp_path: Path
) -> None:
    commit = origin.commit("private")
    url = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}{origin.bare}"
    strangers = tmp_path / "no_known_hosts"
    strangers.write_text("")
    projects = {
        "private": {"url": url, "key_file": sshd.client_key, "known_hosts": sshd.known_hosts},
        "unknown-host": {"url": url, "key_file": sshd.client_key, "known_hosts": strangers},
    }
    settings = make_settings(broker.port, tmp_path / "seed", "g-ssh", projects=projects, state_dir=tmp_path / "state")
    async with open_controller(broker, "g-ssh") as controller, running_worker(settings):
        await controller.submit({"task_id": "by-key", **JOB, "project": "private"})
        await controller.submit({"task_id": "strict", **JOB, "project": "unknown-host"})
        ran = await controller.wait_terminal("by-key")
        refused = await controller.wait_terminal("strict")
    assert ran["state"] == "success", ran["error_message"]
    assert (ran["project"], ran["revision"]) == ("private", commit)
    assert ran["output"]["after"] == "private"
    assert refused["state"] == "failed"
    assert refused["error_message"].startswith("fetch of project 'unknown-host' failed (exit 128): ")
    assert "Host key verification failed" in refused["error_message"]
    # No secret in what the worker published: the key's path is configuration, its content never sent.
    assert sshd.client_key.read_text().splitlines()[1] not in str(ran)


async def test_a_password_in_a_project_url_never_reaches_a_status_or_the_log(
    broker: Broker, origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ansible_worker.run.sources.git")
    origin.commit("one")
    # Nothing listens there: git fails, naming the URL it tried.
    url = f"http://deploy:s3cret-token@127.0.0.1:{free_port()}/site.git"
    settings = make_settings(
        broker.port, tmp_path / "seed", "g-pw", projects={"site": {"url": url}}, state_dir=tmp_path / "state"
    )
    async with open_controller(broker, "g-pw") as controller, running_worker(settings):
        await controller.submit({"task_id": "pw", **JOB, "project": "site"})
        final = await controller.wait_terminal("pw")
    assert final["state"] == "failed"
    assert final["error_message"].startswith("fetch of project 'site' failed (exit 128): ")
    assert "s3cret-token" not in str(controller.statuses["pw"])
    fetching = [record.getMessage() for record in caplog.records if "fetching" in record.getMessage()]
    assert fetching == [f"project site: fetching http://deploy:***@127.0.0.1:{url.rsplit(':', 1)[1]}"]
