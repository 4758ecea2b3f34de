"""Jobs that ship their own playbooks: they run, are sent once, and hostile archives are refused leaving nothing.

Every archive here goes through a real broker to a real worker; a refused one must be
answered with a `failed` status that names the problem, and leave no file in the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.shipping import ShipError, pack_tree
from ansible_worker.mqtt.link import LinkOptions, MqttLink, open_mqtt_link
from ansible_worker.protocol.models import CONTENT_PART_BYTES
from ansible_worker.protocol.signing import Signer
from ansible_worker.run.shipped_content import ContentLimits, ContentRefused, open_archive, plan
from tests.conftest import (
    PLAYBOOKS,
    Broker,
    client_for,
    make_settings,
    open_controller,
    require_signatures,
    running_worker,
    wait_online,
    worker_config,
    worker_process,
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


def pax_entry(name: str, headers: dict[str, str], data: bytes = b"") -> Callable[[tarfile.TarFile], None]:
    """A file whose PAX header says what `headers` say, whatever its own header holds."""

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.pax_headers = headers
        tar.addfile(info, io.BytesIO(data))

    return add


def raw_entry(name: str, headers: dict[str, str]) -> Callable[[tarfile.TarFile], None]:
    """A header written as is, with no data: tarfile would refuse to write a negative size itself."""

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.pax_headers = headers
        block = info.tobuf(tarfile.PAX_FORMAT, tar.encoding, tar.errors)
        assert tar.fileobj is not None
        tar.fileobj.write(block)
        tar.offset += len(block)

    return add


def dot_entries(count: int) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        for index in range(count):
            special_entry("." if index % 2 else "./", tarfile.DIRTYPE)(tar)

    return add


SIXTEEN_MIB = 16 << 20
NEARLY_4096 = "/".join(["d" * 250] * 16)
# Each of these costs the worker more than its header says, or names what the file system refuses.
COSTLY: dict[str, tuple[bytes, str]] = {
    "sparse-negative": (
        archive(
            entries(
                raw_entry("neg", {"GNU.sparse.map": "0,0", "GNU.sparse.realsize": str(-SIXTEEN_MIB)}),
                raw_entry("zeros.bin", {"GNU.sparse.map": "0,0", "GNU.sparse.realsize": str(SIXTEEN_MIB)}),
            )
        ),
        "shipped content refused: sparse files are not accepted",
    ),
    "sparse-size-only": (
        archive(raw_entry("zeros.bin", {"GNU.sparse.realsize": str(SIXTEEN_MIB)})),
        "shipped content refused: 'zeros.bin' is a sparse file",
    ),
    "negative-size": (
        archive(entries(raw_entry("neg", {"size": "-511"}), file_entry("pad.txt"))),
        "shipped content refused: 'neg' has a negative size",
    ),
    "dots-uncounted": (
        archive(entries(dot_entries(30), file_entry("one.txt"))),
        "shipped content refused: more than 20 entries",
    ),
    "implied-directories": (
        archive(file_entry("/".join(f"d{level}" for level in range(25)) + "/deep.txt")),
        "shipped content refused: more than 20 entries",
    ),
    "huge-pax-comment": (
        archive(pax_entry("comment.txt", {"comment": "c" * 200_000})),
        "shipped content refused: an extended header of 200016 bytes (at most 65536)",
    ),
    "file-then-under-it": (
        archive(entries(file_entry("a"), file_entry("a/b"))),
        "shipped content refused: 'a/b' lies under 'a', which is a file",
    ),
    "under-it-then-file": (
        archive(entries(file_entry("a/b"), file_entry("a"))),
        "shipped content refused: 'a/b' lies under 'a', which is a file",
    ),
    "long-name": (
        archive(file_entry("x" * 256)),
        f"shipped content refused: {'x' * 200!r} has a name longer than 255 bytes",
    ),
    "long-path": (
        archive(file_entry("/".join(["d" * 200] * 21))),
        f"shipped content refused: {'/'.join(['d' * 200] * 21)[:200]!r}… is longer than 4096 bytes",
    ),
    "link-loop": (
        archive(entries(link_entry("a", "b"), link_entry("b", "a"))),
        "shipped content refused: symbolic link 'a' leads through more than 40 symbolic links",
    ),
    # Short enough for the archive, too long once under the cache directory.
    "long-path-here": (
        archive(file_entry(NEARLY_4096)),
        f"shipped content refused: {NEARLY_4096[:200]!r} cannot be written: File name too long",
    ),
}


async def test_archives_that_cost_more_than_they_say_are_refused(
    broker: Broker, empty_playbooks: Path, tmp_path: Path
) -> None:
    group = "g-costly"
    state = tmp_path / "state"
    settings = worker_settings(
        broker, empty_playbooks, group, state, max_content_entries=20, max_content_bytes=8_388_608
    )
    async with open_controller(broker, group) as controller, running_worker(settings):
        for task_id, (data, _) in COSTLY.items():
            digest = await publish_content(controller.link, group, data)
            await controller.submit({"task_id": task_id, **JOB, "content": {"sha256": digest, "size": len(data)}})
        finals = {task_id: await controller.wait_terminal(task_id) for task_id in COSTLY}
    wrong = {
        task_id: (finals[task_id]["state"], finals[task_id]["error_message"])
        for task_id, (_, message) in COSTLY.items()
        if (finals[task_id]["state"], finals[task_id]["error_message"]) != ("failed", message)
    }
    assert sorted(wrong) == [], wrong
    assert cache_entries(state) == []
    assert list((tmp_path / "runs").iterdir()) == []


async def test_parts_numbered_in_other_ways_are_ignored(
    broker: Broker, tree: Path, empty_playbooks: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    group = "g-numbers"
    data, _ = pack_tree(tree)
    settings = worker_settings(broker, empty_playbooks, group, tmp_path / "state")
    async with open_controller(broker, group) as controller, running_worker(settings):
        digest = await publish_content(controller.link, group, data)
        # An Arabic-Indic zero, a superscript two, a number with 5,000 digits, a leading zero:
        # none is how parts are numbered, and none may be taken for one or break the worker.
        for number in ("\u0660", "\u00b2", "1" * 5000, "00"):
            topic = f"ansible/{group}/content/{digest}/{number}"
            await controller.link.publish(topic, b"not a part", qos=1, retain=True)
        await controller.submit({"task_id": "numbers", **JOB, "content": {"sha256": digest, "size": len(data)}})
        final = await controller.wait_terminal("numbers")
    assert final["state"] == "success", final["error_message"]
    assert final["output"] == {"shipped": "from the controller"}
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    ignored = [record.getMessage() for record in caplog.records if "ignoring part" in record.getMessage()]
    assert len(ignored) == 4, ignored


def many_directories(count: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(count):
            special_entry(f"d{index}", tarfile.DIRTYPE)(tar)
    return buffer.getvalue()


async def test_judging_an_archive_gives_way_to_other_tasks(tmp_path: Path) -> None:
    path = tmp_path / "many.tar"
    path.write_bytes(many_directories(2000))
    judged: list[int] = []

    async def judge() -> None:
        with open_archive(path) as opened:
            judged.append(len(await plan(opened, ContentLimits(max_bytes=1 << 30, max_entries=10_000))))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(judge)
        # Once the judge has run up to its first checkpoint, and no further.
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    assert judged == []
    # Left alone, the same archive passes.
    await judge()
    assert judged == [2000]


def deep_name_archive(parts: int) -> bytes:
    return archive(file_entry("a/" * parts + "f", b""))


async def test_a_deep_name_is_refused_without_stalling_the_worker(
    broker: Broker, playbook_dir: Path, tmp_path: Path
) -> None:
    group = "g-deep"
    (tmp_path / "runs").mkdir(exist_ok=True)
    config = worker_config(
        tmp_path / "w.json",
        broker,
        playbook_dir,
        group,
        allow_shipped_content=True,
        state_dir=str(tmp_path / "state"),
        concurrency=2,
        run_directory=str(tmp_path / "runs"),
        worker_id="w-deep",
    )
    # 130 KB that name one file 60,000 directories down.
    data = deep_name_archive(60_000)
    async with open_controller(broker, group) as controller, worker_process("run", "-c", str(config)) as worker:
        await worker.wait_for_line("connected to broker")
        async with client_for(broker, group) as client:
            await wait_online(client, "w-deep")
        digest = await publish_content(controller.link, group, data)
        await controller.submit(
            {"task_id": "deep", **JOB, "timeout": 2, "content": {"sha256": digest, "size": len(data)}}
        )
        await controller.submit({"task_id": "plain", "playbook": "quick.yml", "inventory": "one_host.ini"})
        sent = time.monotonic()
        plain = await controller.wait_terminal("plain", within=300)
        plain_after = time.monotonic() - sent
        deep = await controller.wait_terminal("deep", within=300)
        deep_after = time.monotonic() - sent
    # Neither job waited for the other: the plain one takes what a job takes here.
    assert plain_after < 15, plain_after
    assert deep_after < 15, deep_after
    assert plain["state"] == "success", plain["error_message"]
    assert deep["state"] == "failed"
    assert deep["error_message"] == "shipped content refused: an extended header of 120014 bytes (at most 65536)"


async def test_links_lead_through_at_most_as_many_links_as_the_kernel_follows(tmp_path: Path) -> None:
    def chain(length: int) -> bytes:
        # l0 -> l1 -> ... -> file: fine link by link, and one more each for the kernel to follow.
        links = [link_entry(f"l{index}", f"l{index + 1}") for index in range(length)]
        return archive(entries(*links, file_entry(f"l{length}")))

    limits = ContentLimits(max_bytes=1 << 20, max_entries=1000)
    path = tmp_path / "chain.tar"
    path.write_bytes(chain(40))
    with open_archive(path) as opened:
        assert len(await plan(opened, limits)) == 2 + 40 + 1
    path.write_bytes(chain(41))
    with open_archive(path) as opened, pytest.raises(ContentRefused) as refused:
        await plan(opened, limits)
    assert str(refused.value) == "shipped content refused: symbolic link 'l0' leads through more than 40 symbolic links"
