"""Shipped content through the shipped production broker setup: TLS, passwords and the ACL as delivered."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import trio

from ansible_worker.protocol.models import CONTENT_PART_BYTES
from tests.conftest import PLAYBOOKS, make_settings, running_worker, wait_online
from tests.ops import test_acl
from tests.ops.test_acl import GROUP, SecureBroker, controller
from tests.run.test_shipped_content import SHOW

# The fixture of the ACL tests: a broker with deploy/mosquitto as shipped.
secure_broker = test_acl.secure_broker


async def test_a_controller_account_ships_and_a_worker_account_fetches(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "show.yml").write_text(SHOW)
    (tree / "message.txt").write_text("through the ACL")
    shutil.copy(PLAYBOOKS / "one_host.ini", tree / "one_host.ini")
    own = tmp_path / "own"
    own.mkdir()
    settings = make_settings(
        secure_broker.broker.port,
        own,
        GROUP,
        mqtt=secure_broker.mqtt_settings("ansible-worker"),
        allow_shipped_content=True,
        state_dir=tmp_path / "state",
    )
    async with running_worker(settings) as worker, controller(secure_broker) as client:
        await wait_online(client, worker.worker_id)
        first = await client.submit({"playbook": "show.yml", "inventory": "one_host.ini"}, ship=tree)
        final = await first.wait()
        again = await client.submit({"playbook": "show.yml", "inventory": "one_host.ini"}, ship=tree)
        second = await again.wait()
    assert final["state"] == "success", final["error_message"]
    assert final["output"] == {"shipped": "through the ACL"}
    assert second["state"] == "success", second["error_message"]
    assert first.shipment is not None
    assert first.shipment.sent
    assert again.shipment is not None
    # The controller account can read the parts back, so the second job sent nothing.
    assert not again.shipment.sent


async def test_content_of_several_full_parts_passes_the_shipped_broker_config(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "show.yml").write_text(SHOW)
    (tree / "message.txt").write_text("past the size limit")
    shutil.copy(PLAYBOOKS / "one_host.ini", tree / "one_host.ini")
    # Random bytes do not compress: the archive is larger than one part, so part 0 is a full 4 MiB.
    (tree / "blob.bin").write_bytes(os.urandom(CONTENT_PART_BYTES + 500_000))
    own = tmp_path / "own"
    own.mkdir()
    settings = make_settings(
        secure_broker.broker.port,
        own,
        GROUP,
        mqtt=secure_broker.mqtt_settings("ansible-worker"),
        allow_shipped_content=True,
        state_dir=tmp_path / "state",
    )
    async with running_worker(settings) as worker, controller(secure_broker) as client:
        await wait_online(client, worker.worker_id)
        handle = await client.submit({"playbook": "show.yml", "inventory": "one_host.ini"}, ship=tree)
        with trio.fail_after(120):
            final = await handle.wait()
    assert handle.shipment is not None
    assert handle.shipment.size > CONTENT_PART_BYTES
    assert final["state"] == "success", final["error_message"]
    assert final["output"] == {"shipped": "past the size limit"}
    assert final["content_sha256"] == handle.shipment.sha256
