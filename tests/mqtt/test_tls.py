"""TLS to the broker for real: Mosquitto with a TLS listener and certificates made here."""

from __future__ import annotations

import gc
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.mqtt.link import ConnectFailed, LinkOptions, open_mqtt_link
from testing.pki import Pki, make_pki
from tests.conftest import Broker, make_settings, open_controller, running_worker


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def start_tls_broker(directory: Path, pki: Pki, *, certificate: Path, access: str = "allow_anonymous true\n") -> Broker:
    directory.mkdir()
    broker = Broker(
        directory,
        listener_options=(
            f"cafile {pki.ca}\ncertfile {certificate}\nkeyfile {pki.server_key}\nrequire_certificate true\n"
        ),
        access=access,
    )
    broker.start()
    return broker


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    broker = start_tls_broker(tmp_path / "tls-broker", pki, certificate=pki.server_cert)
    try:
        yield broker
    finally:
        broker.stop()


def mutual_tls(pki: Pki, **overrides: Any) -> LinkOptions:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "client_id": "tls-client",
        "tls_enabled": True,
        "tls_ca_cert": pki.ca,
        "tls_client_cert": pki.client_cert,
        "tls_client_key": pki.client_key,
    }
    return LinkOptions(**{**values, **overrides})


async def connect_error(options: LinkOptions) -> str:
    with trio.fail_after(15), pytest.raises(ConnectFailed) as caught:
        async with open_mqtt_link(options):
            pytest.fail("connected, but should have been refused")
    # Python would report a socket left unclosed when it is collected; collect now, in this test.
    gc.collect()
    return str(caught.value)


async def test_mutual_tls_job_round_trip(tls_broker: Broker, pki: Pki, playbook_dir: Path, group: str) -> None:
    tls: dict[str, Any] = {
        "tls_enabled": True,
        "tls_ca_cert": pki.ca,
        "tls_client_cert": pki.client_cert,
        "tls_client_key": pki.client_key,
    }
    settings = make_settings(tls_broker.port, playbook_dir, group, mqtt=tls)
    async with open_controller(tls_broker, group, **tls) as controller, running_worker(settings):
        await controller.submit({"task_id": "tls-1", "playbook": "quick.yml", "inventory": "one_host.ini"})
        final = await controller.wait_terminal("tls-1")
    assert final["state"] == "success"


async def test_unknown_ca_is_refused_with_a_clear_reason(tls_broker: Broker, pki: Pki) -> None:
    reason = await connect_error(mutual_tls(pki, port=tls_broker.port, tls_ca_cert=pki.other_ca))
    assert reason.startswith("TLS certificate verification failed: self-signed certificate in certificate chain")


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path, pki: Pki) -> None:
    broker = start_tls_broker(tmp_path / "misnamed", pki, certificate=pki.misnamed_cert)
    try:
        reason = await connect_error(mutual_tls(pki, port=broker.port))
    finally:
        broker.stop()
    assert reason == (
        "TLS certificate verification failed: IP address mismatch, certificate is not valid for '127.0.0.1'."
    )


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "worker", "right-password"], check=True)
    return path


async def test_tls_with_password_bad_credentials_are_named(tmp_path: Path, pki: Pki, passwords: Path) -> None:
    access = f"allow_anonymous false\npassword_file {passwords}\n"
    broker = start_tls_broker(tmp_path / "password-broker", pki, certificate=pki.server_cert, access=access)
    try:
        good = mutual_tls(pki, port=broker.port, username="worker", password="right-password")
        with trio.fail_after(15):
            async with open_mqtt_link(good) as link:
                await link.publish("ansible/check", b"ok", qos=1)
        reason = await connect_error(mutual_tls(pki, port=broker.port, username="worker", password="wrong"))
        anonymous = await connect_error(mutual_tls(pki, port=broker.port))
    finally:
        broker.stop()
    expected = (
        "broker refused the connection: Not authorized"
        " (check mqtt.username and mqtt.password, and that the broker lets this client connect)"
    )
    assert reason == expected
    assert anonymous == expected
    assert "wrong" not in repr(mutual_tls(pki, port=1, password="wrong"))


async def test_plain_client_cannot_talk_to_tls_listener(tls_broker: Broker) -> None:
    options = LinkOptions(host="127.0.0.1", port=tls_broker.port, client_id="plain")
    with trio.fail_after(15), pytest.raises(ConnectFailed):
        async with open_mqtt_link(options):
            pytest.fail("connected without TLS")
