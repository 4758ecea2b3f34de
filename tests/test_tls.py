"""TLS to the broker for real: Mosquitto with a TLS listener and certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_worker.mqtt_link import ConnectFailed, LinkOptions, open_mqtt_link
from tests.conftest import Broker, make_settings, open_controller, running_worker


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if ip is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    paths = Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )
    paths.ca.write_bytes(_pem(_certificate("test CA", ca_key, "test CA", ca_key, ca=True)))
    paths.other_ca.write_bytes(_pem(_certificate("other CA", other_key, "other CA", other_key, ca=True)))
    paths.server_cert.write_bytes(_pem(_certificate("broker", server_key, "test CA", ca_key, ip="127.0.0.1")))
    paths.client_cert.write_bytes(_pem(_certificate("worker", client_key, "test CA", ca_key)))
    _write_key(paths.server_key, server_key)
    _write_key(paths.client_key, client_key)
    return paths


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    directory = tmp_path / "tls-broker"
    directory.mkdir()
    broker = Broker(
        directory,
        listener_options=(
            f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\nrequire_certificate true\n"
        ),
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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


# paho drops the socket of a failed TLS handshake without closing it; the garbage
# collector closes it and Python reports that. Nothing here can close it earlier.
leaked_socket = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)


@leaked_socket
async def test_unknown_ca_is_refused_with_a_clear_reason(tls_broker: Broker, pki: Pki) -> None:
    options = LinkOptions(
        host="127.0.0.1",
        port=tls_broker.port,
        client_id="wrong-ca",
        tls_enabled=True,
        tls_ca_cert=pki.other_ca,
        tls_client_cert=pki.client_cert,
        tls_client_key=pki.client_key,
    )
    with trio.fail_after(15), pytest.raises(ConnectFailed) as caught:
        async with open_mqtt_link(options):
            pytest.fail("connected despite an untrusted server certificate")
    assert str(caught.value).startswith(
        "TLS certificate verification failed: self-signed certificate in certificate chain"
    )


@leaked_socket
async def test_plain_client_cannot_talk_to_tls_listener(tls_broker: Broker) -> None:
    options = LinkOptions(host="127.0.0.1", port=tls_broker.port, client_id="plain")
    with trio.fail_after(15), pytest.raises(ConnectFailed):
        async with open_mqtt_link(options):
            pytest.fail("connected without TLS")
