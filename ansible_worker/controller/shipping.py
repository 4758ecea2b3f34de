"""Pack a directory into a reproducible tar archive and retain it on the group's content topic, once."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.protocol.topics import Topics

# A day: long enough for a job to wait in a queue, short enough that old trees leave the broker.
DEFAULT_CONTENT_RETENTION = 86_400

# Told (done, total, stage): bytes packed so far, then parts sent so far.
ShipProgress = Callable[[int, int, str], None]


class ContentPublisher(Protocol):
    """What shipping needs of a broker client: the group's topics, what the broker holds, and publishing."""

    @property
    def topics(self) -> Topics:
        """The group's topics."""

    async def retained(self, topic_filter: str) -> list[InboundMessage]:
        """The messages the broker holds for `topic_filter` now."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
    ) -> None:
        """Publish one message."""


class ShipError(Exception):
    """The directory cannot be shipped; the message names the file and why."""


@dataclass(frozen=True)
class Shipment:
    """A packed tree: what the job names (`content`), and whether it had to be sent."""

    sha256: str
    size: int
    files: int
    sent: bool = False

    @property
    def content(self) -> dict[str, object]:
        """The job's `content` field."""
        return {"sha256": self.sha256, "size": self.size}


def _entries(directory: Path) -> list[Path]:
    """Every path under `directory`, sorted, without `.git` anywhere."""
    found: list[Path] = []
    for parent, dirs, files in os.walk(directory):
        dirs[:] = sorted(name for name in dirs if name != ".git")
        base = Path(parent)
        found.extend(base / name for name in dirs)
        found.extend(base / name for name in sorted(files) if name != ".git")
    found.sort(key=lambda path: path.relative_to(directory).as_posix())
    return found


def pack_tree(directory: Path, *, progress: ShipProgress | None = None) -> tuple[bytes, int]:
    """A tar archive of `directory` (without `.git`) and its number of entries.

    The same tree always gives the same bytes: entries sorted, times, owners and names
    zeroed, so the same tree shipped twice has the same digest and is sent once. Kept:
    file modes (setuid, setgid and sticky bits dropped) and relative symbolic links.
    `progress(done, total, "packing")` is told the bytes of file data packed so far.

    Errors: `ShipError` for a file that is neither a regular file, a directory nor a link,
    or that cannot be read.
    """
    if not directory.is_dir():
        raise ShipError(f"--ship: not a directory: {directory}")
    try:
        return _pack(directory, progress)
    except OSError as exc:
        raise ShipError(f"--ship: cannot read {exc.filename or directory}: {exc.strerror or exc}") from None


def _pack(directory: Path, progress: ShipProgress | None) -> tuple[bytes, int]:
    entries = _entries(directory)
    sizes = {path: path.lstat().st_size for path in entries if path.is_file() and not path.is_symlink()}
    total = sum(sizes.values())
    done = 0
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in entries:
            name = path.relative_to(directory).as_posix()
            info = os.lstat(path)
            member = tarfile.TarInfo(name)
            member.mode = stat.S_IMODE(info.st_mode) & 0o777
            member.mtime = 0
            if stat.S_ISLNK(info.st_mode):
                member.type = tarfile.SYMTYPE
                member.linkname = os.readlink(path)
                archive.addfile(member)
            elif stat.S_ISDIR(info.st_mode):
                member.type = tarfile.DIRTYPE
                archive.addfile(member)
            elif stat.S_ISREG(info.st_mode):
                member.size = sizes[path]
                with path.open("rb") as source:
                    archive.addfile(member, source)
                done += member.size
                if progress is not None:
                    progress(done, total, "packing")
            else:
                raise ShipError(f"--ship: {name} is not a regular file, directory or symbolic link")
    return buffer.getvalue(), len(entries)


async def ship(
    client: ContentPublisher,
    directory: Path,
    *,
    retention: int = DEFAULT_CONTENT_RETENTION,
    progress: ShipProgress | None = None,
) -> Shipment:
    """Pack `directory` and retain it, in parts, on the content topics of its digest, unless they are there.

    Part `n` of the archive (`CONTENT_PART_BYTES` each, the last one shorter) goes to
    `<prefix>/<group>/content/<sha256>/<n>`. Which parts the broker holds is learned by
    asking the client what the broker retains on them; a part is sent (QoS 1,
    retained, expiring after `retention` seconds) only when the broker does not hold
    exactly its bytes. `progress(done, total, stage)` hears of packing, then of sending.

    Cancellation: nothing is left subscribed; the parts already sent stay retained.
    """
    # Here, not at the top: the protocol's models load pydantic, which no other command needs.
    from ansible_worker.protocol.models import CONTENT_PART_BYTES

    data, files = pack_tree(directory, progress=progress)
    sha256 = hashlib.sha256(data).hexdigest()
    view = memoryview(data)
    starts = range(0, len(data), CONTENT_PART_BYTES)
    held: set[int] = set()
    for message in await client.retained(client.topics.content_parts(sha256)):
        leaf = message.topic.rpartition("/")[2]
        if leaf.isdigit() and int(leaf) < len(starts):
            start = starts[int(leaf)]
            if message.payload == view[start : start + CONTENT_PART_BYTES]:
                held.add(int(leaf))
    missing = [index for index in range(len(starts)) if index not in held]
    for done, index in enumerate(missing, 1):
        start = starts[index]
        part = bytes(view[start : start + CONTENT_PART_BYTES])
        await client.publish(client.topics.content_part(sha256, index), part, qos=1, retain=True, expiry=retention)
        if progress is not None:
            progress(done, len(missing), "sending")
    return Shipment(sha256, len(data), files, sent=bool(missing))
