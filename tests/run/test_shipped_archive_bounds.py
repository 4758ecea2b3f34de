"""Archives that cost more than their headers say: refused at once, with the worker's other work going on.

Negative and sparse sizes, uncounted entries and implied directories, large extended headers,
names the file system refuses, link chains, odd part numbers, and names deep enough to make a
careless check quadratic. Most go through a real broker to a real worker; the rest judge an
archive directly, where the event loop's share is the point.
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from ansible_worker.controller.shipping import pack_tree
from ansible_worker.run.sources.shipped_content import ContentLimits, ContentRefused, open_archive, plan
from tests.conftest import (
    PLAYBOOKS,
    Broker,
    client_for,
    open_controller,
    running_worker,
    wait_online,
    worker_config,
    worker_process,
)
from tests.run.test_shipped_content import (
    JOB,
    SHOW,
    archive,
    cache_entries,
    entries,
    file_entry,
    link_entry,
    publish_content,
    special_entry,
    worker_settings,
)


@pytest.fixture
def empty_playbooks(tmp_path: Path) -> Path:
    """The worker's own playbook directory: nothing in it, so only shipped content can run."""
    directory = tmp_path / "own"
    directory.mkdir()
    return directory


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A directory to ship: the playbook that reads `message.txt`, and its inventory."""
    directory = tmp_path / "ship"
    directory.mkdir()
    (directory / "show.yml").write_text(SHOW)
    (directory / "message.txt").write_text("from the controller")
    (directory / "one_host.ini").write_text((PLAYBOOKS / "one_host.ini").read_text())
    return directory


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
