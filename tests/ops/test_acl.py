"""The shipped production broker setup for real: TLS, passwords and the least-privilege ACL.

The broker runs `deploy/mosquitto/mosquitto.conf` and `deploy/mosquitto/acl` as shipped, with
only the paths, the port and a test-only observer account filled in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.client import Client, Target, open_client
from ansible_worker.mqtt.link import InboundMessage, LinkOptions, PublishRefused, open_mqtt_link
from ansible_worker.protocol.topics import Topics
from testing.pki import Pki, make_pki
from tests.conftest import ANSIBLE_PLAYBOOK, REPO, Broker, make_settings, running_worker, worker_process

DEPLOY = REPO / "deploy" / "mosquitto"
EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")
GROUP = "default"  # the group the shipped ACL is written for
PASSWORDS = {
    "ansible-worker": "worker-pw-7Hq2Zp",
    "ansible-controller": "controller-pw-K9xW4m",
    "observer": "observer-pw-3Rt8Yc",
}
TOPICS = Topics("ansible", GROUP)
QUICK = {"playbook": "quick.yml", "inventory": "one_host.ini"}


@dataclass
class SecureBroker:
    broker: Broker
    pki: Pki

    def link(self, user: str, client_id: str) -> LinkOptions:
        return LinkOptions(
            host="127.0.0.1",
            port=self.broker.port,
            client_id=client_id,
            username=user,
            password=PASSWORDS[user],
            tls_enabled=True,
            tls_ca_cert=self.pki.ca,
        )

    def mqtt_settings(self, user: str) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.broker.port,
            "username": user,
            "password": PASSWORDS[user],
            "tls_enabled": True,
            "tls_ca_cert": str(self.pki.ca),
        }


def production_config(port: int, directory: Path, pki: Pki) -> str:
    """The shipped mosquitto.conf, pointed at this test's files and port; nothing else changes."""
    text = (DEPLOY / "mosquitto.conf").read_text()
    replacements = {
        "listener 8883": f"listener {port} 127.0.0.1",
        "/mosquitto/certs/server.pem": str(pki.server_cert),
        "/mosquitto/certs/server.key": str(pki.server_key),
        "/mosquitto/certs/ca.pem": str(pki.ca),
        "/mosquitto/config/passwords": str(directory / "passwords"),
        "/mosquitto/config/acl": str(directory / "acl"),
        "/mosquitto/data/": f"{directory / 'data'}/",
    }
    for shipped, here in replacements.items():
        assert shipped in text, f"the shipped config no longer says {shipped!r}"
        text = text.replace(shipped, here)
    return text


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    directory = tmp_path / "secure-broker"
    directory.mkdir()
    (directory / "data").mkdir()
    pki = make_pki(tmp_path / "pki")
    passwords = directory / "passwords"
    for user, password in PASSWORDS.items():
        flags = ["-b"] if passwords.exists() else ["-c", "-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(passwords), user, password], check=True)
    # A test-only account that may read everything and write nothing, to see all traffic.
    # The observer reads everything and may claim jobs, but write nothing else: a worker
    # with its account takes a job and is refused every status.
    observer = "\nuser observer\ntopic read ansible/#\ntopic readwrite ansible/+/tasks/+/claim\n"
    (directory / "acl").write_text((DEPLOY / "acl").read_text() + observer)
    broker = Broker(directory, render=lambda port: production_config(port, directory, pki))
    broker.start()
    try:
        yield SecureBroker(broker, pki)
    finally:
        broker.stop()


@asynccontextmanager
async def controller(secure: SecureBroker) -> AsyncIterator[Client]:
    async with open_client(Target(secure.link("ansible-controller", "controller"), TOPICS)) as client:
        yield client


async def test_each_account_does_its_part_and_nothing_else(
    secure_broker: SecureBroker, playbook_dir: Path, tmp_path: Path
) -> None:
    settings = make_settings(
        secure_broker.broker.port, playbook_dir, GROUP, mqtt=secure_broker.mqtt_settings("ansible-worker")
    )
    job = {"playbook": "touch.yml", "inventory": "one_host.ini"}
    async with running_worker(settings) as worker, controller(secure_broker) as client:
        # A client the ACL does not let write jobs: the broker says no, and nothing runs.
        async with open_mqtt_link(secure_broker.link("observer", "observer")) as observer:
            forbidden = {"task_id": "forbidden", **job, "extra_vars": {"marker": str(tmp_path / "forbidden.ran")}}
            with pytest.raises(PublishRefused, match="Not authorized"):
                await observer.publish(TOPICS.tasks, json.dumps(forbidden).encode(), qos=1)
        # A controller may not forge a status, nor claim a job for a worker.
        async with open_mqtt_link(secure_broker.link("ansible-controller", "forger")) as forger:
            forged = json.dumps({"task_id": "allowed", "state": "success"}).encode()
            with pytest.raises(PublishRefused, match="Not authorized"):
                await forger.publish(TOPICS.status("allowed"), forged, qos=1, retain=True)
            with pytest.raises(PublishRefused, match="Not authorized"):
                await forger.publish(TOPICS.claim("allowed"), b"{}", qos=1, retain=True)
        # What each account is there for works: a job, its status and events, presence, cancel.
        allowed = await client.submit({"task_id": "allowed", **job, "extra_vars": {"marker": str(tmp_path / "ok")}})
        events = []
        with trio.fail_after(60):
            async for update in allowed.updates():
                if update.kind == "event":
                    events.append(update.data)
        workers = await client.workers()
        await client.cancel("allowed", reason="late")  # allowed, though the job is over
        # Handled in order: the job ahead of the forbidden one's would-be status is answered.
        assert await client.status("forbidden") is None
    assert allowed.latest is not None
    assert allowed.latest["state"] == "success"
    assert events
    assert [w["worker_id"] for w in workers] == [worker.worker_id]
    assert (tmp_path / "ok").exists()
    assert not (tmp_path / "forbidden.ran").exists()


async def observe(secure: SecureBroker, seen: list[InboundMessage], *, task_status: trio.TaskStatus[None]) -> None:
    async with open_mqtt_link(secure.link("observer", "observer")) as link:
        await link.subscribe("ansible/#", 1)
        task_status.started()
        async for message in link.messages():
            seen.append(message)


def write_production_configs(
    secure_broker: SecureBroker, playbook_dir: Path, keys: Path, tmp_path: Path
) -> tuple[Path, Path]:
    """A signed worker's config (its secrets as `${VAR}`) and its controller's, as an operator writes them."""
    worker_mqtt = {**secure_broker.mqtt_settings("ansible-worker"), "password": "${MQTT_PASSWORD}"}
    worker_file = tmp_path / "worker.yaml"
    worker_file.write_text(
        json.dumps(
            {
                "mqtt": worker_mqtt,
                "worker": {
                    "group_name": GROUP,
                    "worker_id": "secure-1",
                    "playbook_directory": str(playbook_dir),
                    "ansible_playbook_path": ANSIBLE_PLAYBOOK,
                    "environment": {"DEPLOY_TOKEN": "${DEPLOY_TOKEN}"},
                },
                "security": {
                    "require_signed_tasks": True,
                    "trusted_keys": {"alice": str(keys / "alice.pub")},
                    "worker_key": str(keys / "worker.key"),
                },
                "log_level": "DEBUG",
            }
        )
    )
    controller_file = tmp_path / "controller.yaml"
    controller_file.write_text(
        json.dumps(
            {
                "mqtt": secure_broker.mqtt_settings("ansible-controller"),
                "worker": {"group_name": GROUP},
                "security": {"signing_key": str(keys / "alice.key")},
            }
        )
    )
    return worker_file, controller_file


async def test_signed_production_run_keeps_every_secret(
    secure_broker: SecureBroker, playbook_dir: Path, keys: Path, tmp_path: Path
) -> None:
    """Worker and CLI as an operator runs them; no password or token shows up anywhere."""
    worker_password, token = PASSWORDS["ansible-worker"], "deploy-token-Vb61sQ0"
    worker_file, controller_file = write_production_configs(secure_broker, playbook_dir, keys, tmp_path)
    environment = {**os.environ, "MQTT_PASSWORD": worker_password, "DEPLOY_TOKEN": token}
    seen: list[InboundMessage] = []
    outputs: list[bytes] = []

    async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(120):
            result = await trio.run_process(
                [EXECUTABLE, *args, "-c", str(controller_file)], capture_stdout=True, capture_stderr=True, check=False
            )
        outputs.extend((result.stdout, result.stderr))
        return result

    async with trio.open_nursery() as nursery:
        await nursery.start(observe, secure_broker, seen)
        async with worker_process("run", "-c", str(worker_file), env=environment) as worker:
            async with controller(secure_broker) as client:
                with trio.fail_after(30):
                    await client.wait_for_worker("secure-1")
            submitted = await cli("submit", "secret_env.yml", "-i", "one_host.ini", "--wait", "--json")
            listing = await cli("workers", "--json")
            await worker.stop()
        async with controller(secure_broker) as client:
            await client.barrier()  # the observer has had every message by now too
        nursery.cancel_scope.cancel()
    with trio.fail_after(60):
        validated = await trio.run_process(
            [EXECUTABLE, "validate", "-c", str(worker_file)], env=environment, capture_stdout=True, capture_stderr=True
        )
    assert worker.process.returncode == 0
    assert submitted.returncode == 0, submitted.stderr
    # One JSON object per line, the terminal status last.
    final = json.loads(submitted.stdout.decode().splitlines()[-1])["data"]
    assert final["state"] == "success"
    # The token reached Ansible; the worker's broker password did not.
    assert int(final["output"]["token_length"]) == len(token)
    assert int(final["output"]["broker_password_length"]) == 0
    assert [json.loads(line)["worker_id"] for line in listing.stdout.decode().splitlines()] == ["secure-1"]
    log_text = "\n".join(worker.lines).encode()
    assert b"signed by alice, claimed for this worker" in log_text
    assert any(message.topic.endswith("/events") for message in seen)
    everything = [log_text, validated.stdout, validated.stderr, *outputs]
    everything += [message.topic.encode() + b" " + message.payload for message in seen]
    for secret in (worker_password, PASSWORDS["ansible-controller"], token):
        leaks = [text[:200] for text in everything if secret.encode() in text]
        assert leaks == [], f"{secret} leaked"


async def test_a_status_the_acl_refuses_is_reported_not_believed_sent(
    secure_broker: SecureBroker, playbook_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker given an account that may read the group's topics and claim, but write no status.
    settings = make_settings(
        secure_broker.broker.port, playbook_dir, GROUP, mqtt=secure_broker.mqtt_settings("observer")
    )
    async with running_worker(settings), controller(secure_broker) as client:
        await client.link.publish(TOPICS.tasks, json.dumps({"task_id": "unheard", **QUICK}).encode(), qos=2)
        with trio.fail_after(60):
            while not any("status of unheard is lost" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 - a log record has no event
                await trio.sleep(0.05)
        assert await client.status("unheard") is None
    lost = [r for r in caplog.records if "status of unheard is lost" in r.getMessage()]
    assert lost[0].levelname == "ERROR"
    assert (
        "broker refused the publish to 'ansible/default/tasks/unheard/status': Not authorized" in lost[0].getMessage()
    )
