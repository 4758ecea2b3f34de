"""Pack a directory into a reproducible tar archive and retain it on the group's content topic, once."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import trio

if TYPE_CHECKING:
    from ansible_worker.controller.client import Client

# A day: long enough for a job to wait in a queue, short enough that old trees leave the broker.
DEFAULT_CONTENT_RETENTION = 86_400
# Trees smaller than this are packed without a progress bar.
PROGRESS_FROM_BYTES = 4 << 20

Progress = Callable[[int, int], None]


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


def pack_tree(directory: Path, *, progress: Progress | None = None) -> tuple[bytes, int]:
    """A tar archive of `directory` (without `.git`) and its number of entries.

    The same tree always gives the same bytes: entries sorted, times, owners and names
    zeroed, so the same tree shipped twice has the same digest and is sent once. Kept:
    file modes (setuid, setgid and sticky bits dropped) and relative symbolic links.
    `progress(done, total)` is told the bytes of file data packed so far.

    Errors: `ShipError` for a file that is neither a regular file, a directory nor a link,
    or that cannot be read.
    """
    if not directory.is_dir():
        raise ShipError(f"--ship: not a directory: {directory}")
    try:
        return _pack(directory, progress)
    except OSError as exc:
        raise ShipError(f"--ship: cannot read {exc.filename or directory}: {exc.strerror or exc}") from None


def _pack(directory: Path, progress: Progress | None) -> tuple[bytes, int]:
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
                    progress(done, total)
            else:
                raise ShipError(f"--ship: {name} is not a regular file, directory or symbolic link")
    return buffer.getvalue(), len(entries)


async def ship(
    client: Client,
    directory: Path,
    *,
    retention: int = DEFAULT_CONTENT_RETENTION,
    progress: Progress | None = None,
) -> Shipment:
    """Pack `directory` and retain it on the content topic of its digest, unless it is there already.

    Whether the broker holds it is learned by subscribing to that topic and waiting for the
    client's barrier; the archive is sent (QoS 1, retained, expiring after `retention`
    seconds) only when it is not.

    Cancellation: the subscription is ended; an archive cut off mid-send is not retained.
    """
    data, files = pack_tree(directory, progress=progress)
    sha256 = hashlib.sha256(data).hexdigest()
    topic = client.topics.content(sha256)
    receive = await client.subscribe([topic], qos=1)
    try:
        await client.barrier()
        present = False
        while True:
            try:
                message = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if len(message.payload) == len(data) and hashlib.sha256(message.payload).hexdigest() == sha256:
                present = True
    finally:
        await client.unsubscribe([topic], receive)
    if present:
        return Shipment(sha256, len(data), files, sent=False)
    await client.publish(topic, data, qos=1, retain=True, expiry=retention)
    return Shipment(sha256, len(data), files, sent=True)


class ProgressBar:
    """`[#####-----] 48% packing 12.3 of 25.6 MB` on a terminal, redrawn in place; silent elsewhere."""

    def __init__(self, stream: TextIO = sys.stderr, *, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.active = stream.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.active or total < PROGRESS_FROM_BYTES:
            return
        percent = done * 100 // total
        if percent == self._shown:
            return
        self._shown = percent
        filled = self.width * done // total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {percent:3d}% packing {done / 1e6:.1f} of {total / 1e6:.1f} MB")
        self.stream.flush()

    def finish(self, text: str) -> None:
        """Replace the bar (on a terminal) by a line that says what was shipped; the line is written anyway."""
        if self.active and self._shown >= 0:
            self.stream.write("\r" + " " * (self.width + 40) + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
