"""Jobs that ship their own playbooks: they run, are sent once, and hostile archives are refused leaving nothing.

Every archive here goes through a real broker to a real worker; a refused one must be
answered with a `failed` status that names the problem, and leave no file in the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.shipping import ShipError, pack_tree
from ansible_worker.mqtt.link import LinkOptions, MqttLink, open_mqtt_link
from ansible_worker.protocol.models import CONTENT_PART_BYTES
from ansible_worker.protocol.signing import Signer
from tests.conftest import (
    PLAYBOOKS,
    Broker,
    client_for,
    make_settings,
    open_controller,
    require_signatures,
    running_worker,
    wait_online,
)
from tests.deployment import Deployment, lane

SHOW = """\
- name: Show
  hosts: host1
  gather_facts: false
  tasks:
    - name: Read
      ansible.builtin.set_stats:
        data:
          shipped: "{{ lookup('ansible.builtin.file', 'message.txt') }}"
"""

JOB = {"playbook": "show.yml", "inventory": "one_host.ini"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A directory to ship, with a .git that must stay behind and an executable script."""
    directory = tmp_path / "ship"
    directory.mkdir()
    shutil.copy(PLAYBOOKS / "one_host.ini", directory / "one_host.ini")
    (directory / "show.yml").write_text(SHOW)
    (directory / "message.txt").write_text("from the controller")
    (directory / "files").mkdir()
    script = directory / "files" / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o4755)
    (directory / "link.txt").symlink_to("message.txt")
    (directory / ".git").mkdir()
    (directory / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return directory


@pytest.fixture
def empty_playbooks(tmp_path: Path) -> Path:
    """The worker's own playbook directory: nothing in it, so only shipped content can run."""
    directory = tmp_path / "own"
    directory.mkdir()
    return directory


def cache_entries(state: Path) -> list[str]:
    trees = state / "sources" / "trees"
    return sorted(path.name for path in trees.iterdir()) if trees.is_dir() else []


def worker_settings(broker: Broker, playbooks: Path, group: str, state: Path, **worker: Any) -> Any:
    values: dict[str, Any] = {"allow_shipped_content": True, "state_dir": state, **worker}
    return make_settings(broker.port, playbooks, group, **values)


@lane
async def test_a_job_runs_from_shipped_content_and_the_same_tree_is_sent_once(
    broker: Broker, tree: Path, empty_playbooks: Path, tmp_path: Path, deployment: Deployment
) -> None:
    group = "g-ship"
    state = tmp_path / "state"
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="content-watcher")
    live: list[bytes] = []
    async with (
        open_mqtt_link(options) as watcher,
        deployment.running(worker_settings(broker, empty_playbooks, group, state)) as worker,
        client_for(broker, group) as client,
    ):
        # Counts what is published on the content topics from now on (live, not retained copies).
        await watcher.subscribe(f"ansible/{group}/content/+/+", 1)
        await wait_online(client, worker.worker_id)
        first = await client.submit({"task_id": "ship-1", **JOB}, ship=tree)
        final = await first.wait()
        second = await client.submit({"task_id": "ship-2", **JOB}, ship=tree)
        again = await second.wait()
        await client.barrier()
        with trio.move_on_after(0.5):
            async for message in watcher.messages():
                if not message.retain:
                    live.append(message.payload)
    assert final["state"] == "success", final["error_message"]
    assert again["state"] == "success", again["error_message"]
    assert final["output"] == {"shipped": "from the controller"}
    assert first.shipment is not None
    assert second.shipment is not None
    assert first.shipment.sent
    assert not second.shipment.sent
    assert final["content_sha256"] == again["content_sha256"] == first.shipment.sha256
    assert len(live) == 1
    assert hashlib.sha256(live[0]).hexdigest() == first.shipment.sha256
    unpacked = state / "sources" / "trees" / f"sha256-{first.shipment.sha256}"
    # No .git, modes kept but never setuid, links kept.
    assert not (unpacked / ".git").exists()
    assert (unpacked / "files" / "run.sh").stat().st_mode & 0o7777 == 0o555
    assert (unpacked / "link.txt").readlink() == Path("message.txt")


async def publish_content(
    link: MqttLink, group: str, data: bytes, *, digest: str | None = None, only: set[int] | None = None
) -> str:
    """Retain `data` in parts, as `submit --ship` does (under another digest, or only some parts, when asked)."""
    digest = digest or hashlib.sha256(data).hexdigest()
    for index, start in enumerate(range(0, len(data), CONTENT_PART_BYTES)):
        if only is None or index in only:
            part = data[start : start + CONTENT_PART_BYTES]
            await link.publish(f"ansible/{group}/content/{digest}/{index}", part, qos=1, retain=True)
    return digest


def archive(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in (("show.yml", SHOW), ("one_host.ini", (PLAYBOOKS / "one_host.ini").read_text())):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add(tar)
    return buffer.getvalue()


def file_entry(name: str, data: bytes = b"x") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    return add


def special_entry(name: str, kind: bytes, linkname: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.devmajor, info.devminor = 1, 3
        tar.addfile(info)

    return add


def many_entries(count: int) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        for index in range(count):
            file_entry(f"many/{index}.txt")(tar)

    return add


def claims_huge_file() -> bytes:
    """A tar whose one header claims 10 GB of data it does not carry: a bomb by its header."""
    info = tarfile.TarInfo("huge.bin")
    info.size = 10**10
    return info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024


HOSTILE: dict[str, tuple[bytes, str]] = {
    "dotdot": (archive(file_entry("../escape.txt")), "shipped content refused: '../escape.txt' contains '..'"),
    "absolute": (archive(file_entry("/tmp/abs.txt")), "shipped content refused: '/tmp/abs.txt' is an absolute path"),
    "link-out": (
        archive(special_entry("out", tarfile.SYMTYPE, "../../../etc/passwd")),
        "shipped content refused: symbolic link 'out' leads outside the tree",
    ),
    "link-absolute": (
        archive(special_entry("abs", tarfile.SYMTYPE, "/etc/passwd")),
        "shipped content refused: symbolic link 'abs' is absolute",
    ),
    "link-empty": (
        archive(special_entry("nowhere", tarfile.SYMTYPE, "")),
        "shipped content refused: symbolic link 'nowhere' has no usable target",
    ),
    "device": (
        archive(special_entry("null", tarfile.CHRTYPE)),
        "shipped content refused: 'null' is a device, FIFO or other special file",
    ),
    "fifo": (
        archive(special_entry("pipe", tarfile.FIFOTYPE)),
        "shipped content refused: 'pipe' is a device, FIFO or other special file",
    ),
    "too-many": (archive(many_entries(30)), "shipped content refused: more than 20 entries"),
    "too-big": (claims_huge_file(), "shipped content refused: more than 8388608 bytes once unpacked"),
}


async def test_hostile_archives_are_refused_and_leave_nothing(
    broker: Broker, empty_playbooks: Path, tmp_path: Path
) -> None:
    group = "g-hostile"
    state = tmp_path / "state"
    settings = worker_settings(
        broker, empty_playbooks, group, state, max_content_entries=20, max_content_bytes=8_388_608
    )
    async with open_controller(broker, group) as controller, running_worker(settings):
        for task_id, (data, _) in HOSTILE.items():
            digest = await publish_content(controller.link, group, data)
            await controller.submit({"task_id": task_id, **JOB, "content": {"sha256": digest, "size": len(data)}})
        # Published under the digest of other bytes: a changed archive.
        honest, changed = archive(lambda tar: None), archive(file_entry("extra.txt"))
        digest = await publish_content(controller.link, group, changed, digest=hashlib.sha256(honest).hexdigest())
        await controller.submit({"task_id": "changed", **JOB, "content": {"sha256": digest, "size": len(changed)}})
        missing = "0" * 64
        await controller.submit({"task_id": "missing", **JOB, "content": {"sha256": missing, "size": 10}})
        # Two parts named, one retained.
        big = bytes(CONTENT_PART_BYTES + 10)
        partial = await publish_content(controller.link, group, big, only={0})
        await controller.submit({"task_id": "partial", **JOB, "content": {"sha256": partial, "size": len(big)}})
        # A part longer than the archive the job names.
        small = archive(file_entry("pad.txt"))
        padded = await publish_content(controller.link, group, small + b"x", digest=hashlib.sha256(small).hexdigest())
        await controller.submit({"task_id": "padded", **JOB, "content": {"sha256": padded, "size": len(small)}})
        waited = [*HOSTILE, "changed", "missing", "partial", "padded"]
        finals = {task_id: await controller.wait_terminal(task_id) for task_id in waited}
    for task_id, (_, message) in HOSTILE.items():
        assert finals[task_id]["state"] == "failed", task_id
        assert finals[task_id]["error_message"] == message, task_id
    assert finals["changed"]["error_message"].startswith("shipped content does not match its digest: sha256 ")
    assert finals["missing"]["error_message"] == f"shipped content not found on the broker: sha256 {missing}"
    assert (
        finals["partial"]["error_message"]
        == f"shipped content sha256 {partial} is incomplete on the broker: 1 of 2 parts"
    )
    assert finals["padded"]["error_message"] == (
        f"shipped content sha256 {padded}: part 0 has {len(small) + 1} bytes, not {len(small)}"
    )
    assert cache_entries(state) == []
    assert not (tmp_path / "escape.txt").exists()
    assert list((tmp_path / "runs").iterdir()) == []


async def test_shipping_disabled_is_refused(broker: Broker, tree: Path, empty_playbooks: Path, tmp_path: Path) -> None:
    group = "g-noship"
    state = tmp_path / "state"
    data, _ = pack_tree(tree)
    digest = hashlib.sha256(data).hexdigest()
    settings = worker_settings(broker, empty_playbooks, group, state, allow_shipped_content=False)
    async with open_controller(broker, group) as controller, running_worker(settings):
        await publish_content(controller.link, group, data)
        await controller.submit({"task_id": "off", **JOB, "content": {"sha256": digest, "size": len(data)}})
        final = await controller.wait_terminal("off")
    assert final["state"] == "failed"
    assert final["error_message"] == (
        "shipped content is not allowed on this worker (worker.allow_shipped_content is false)"
    )
    assert cache_entries(state) == []


async def test_signed_job_whose_content_was_changed_is_refused(
    broker: Broker, tree: Path, empty_playbooks: Path, tmp_path: Path, keys: Path
) -> None:
    group = "g-signed-ship"
    state = tmp_path / "state"
    data, _ = pack_tree(tree)
    digest = hashlib.sha256(data).hexdigest()
    (tree / "message.txt").write_text("swapped in transit")
    other, _ = pack_tree(tree)
    other_digest = hashlib.sha256(other).hexdigest()
    settings = worker_settings(broker, empty_playbooks, group, state, security=require_signatures(keys))
    signer = Signer.from_file(keys / "alice.key")
    async with open_controller(broker, group) as controller, running_worker(settings):
        await publish_content(controller.link, group, other)
        signed = signer.sign(
            f"ansible/{group}/tasks",
            {"task_id": "signed-ship", **JOB, "content": {"sha256": digest, "size": len(data)}},
        )
        # Someone on the way points the signed job at other content.
        signed["content"] = {"sha256": other_digest, "size": len(other)}
        await controller.submit(json.dumps(signed).encode())
        final = await controller.wait_terminal("signed-ship")
    assert final["state"] == "failed"
    assert "signature" in final["error_message"]
    assert cache_entries(state) == []


def test_packing_is_reproducible_and_refuses_special_files(tree: Path, tmp_path: Path) -> None:
    first, entries = pack_tree(tree)
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    (copy / "message.txt").touch()  # a newer time changes nothing
    assert pack_tree(copy)[0] == first
    with tarfile.open(fileobj=io.BytesIO(first)) as archive:
        names = archive.getnames()
    assert len(names) == entries
    assert not any(name == ".git" or name.startswith(".git/") for name in names)
    os.mkfifo(copy / "pipe")
    with pytest.raises(ShipError, match="pipe is not a regular file, directory or symbolic link"):
        pack_tree(copy)


def entries(*adds: Callable[[tarfile.TarFile], None]) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        for one in adds:
            one(tar)

    return add


def link_entry(name: str, target: str) -> Callable[[tarfile.TarFile], None]:
    return special_entry(name, tarfile.SYMTYPE, target)


# A link deep in the tree that leads back to its top, and one that climbs out through it: by
# name, the playbook's `message.txt` goes down 21 levels and back up 21, to `etc/passwd` in
# the tree. On disk `l1` is the top of the tree itself, so the 21 levels are climbed from
# there, past `/`, and the job would publish the worker's /etc/passwd.
DEEP = "/".join(f"d{level}" for level in range(20))
L1 = link_entry(f"{DEEP}/l1", "../" * 20)
UP = link_entry("message.txt", f"{DEEP}/l1/" + "../" * 21 + "etc/passwd")
THROUGH_L1 = f"shipped content refused: symbolic link 'message.txt' leads through symbolic link '{DEEP}/l1'"
CHAINS: dict[str, tuple[bytes, str]] = {
    "chain-outer-link-first": (archive(entries(UP, L1)), THROUGH_L1),
    "chain-inner-link-first": (archive(entries(L1, UP)), THROUGH_L1),
    "entry-before-its-link": (
        archive(entries(file_entry("d/x.txt"), link_entry("d", "sub"), special_entry("sub", tarfile.DIRTYPE))),
        "shipped content refused: 'd/x.txt' lies under a symbolic link",
    ),
    "hard-link-to-a-chain": (
        archive(entries(UP, L1, special_entry("h", tarfile.LNKTYPE, "message.txt"))),
        "shipped content refused: 'h' is a hard link",
    ),
}


async def test_links_through_links_are_refused_whatever_their_order(
    broker: Broker, empty_playbooks: Path, tmp_path: Path
) -> None:
    group = "g-chains"
    state = tmp_path / "state"
    # Links that end on links are fine: each one is checked, and none climbs through another.
    fine = archive(
        entries(
            file_entry("texts/hello.txt", b"through two links"),
            link_entry("alias.txt", "texts/hello.txt"),
            link_entry("message.txt", "alias.txt"),
        )
    )
    async with (
        open_controller(broker, group) as controller,
        running_worker(worker_settings(broker, empty_playbooks, group, state)),
    ):
        for task_id, (data, _) in CHAINS.items():
            digest = await publish_content(controller.link, group, data)
            await controller.submit({"task_id": task_id, **JOB, "content": {"sha256": digest, "size": len(data)}})
        good = await publish_content(controller.link, group, fine)
        await controller.submit({"task_id": "fine", **JOB, "content": {"sha256": good, "size": len(fine)}})
        finals = {task_id: await controller.wait_terminal(task_id) for task_id in [*CHAINS, "fine"]}
    for task_id, (_, message) in CHAINS.items():
        assert finals[task_id]["state"] == "failed", task_id
        assert finals[task_id]["error_message"] == message, task_id
    assert finals["fine"]["state"] == "success", finals["fine"]["error_message"]
    assert finals["fine"]["output"] == {"shipped": "through two links"}
    # Nothing of a refused archive is left: not a half-built tree, not a run directory.
    assert cache_entries(state) == [f"sha256-{good}"]
    assert list((tmp_path / "runs").iterdir()) == []
