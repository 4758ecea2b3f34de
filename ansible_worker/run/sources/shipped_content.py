"""Check and unpack the tar archive a job ships, refusing anything that could leave its directory."""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import trio

from ansible_worker.run.errors import JobRefusedError

# Bytes hashed or written between checkpoints: about a millisecond of work each.
_CHUNK = 1 << 20


class ContentRefused(JobRefusedError):
    """Shipped content that the worker will not unpack; the message names the entry and the rule."""


@dataclass(frozen=True)
class ContentLimits:
    """Bounds on an archive once unpacked: bytes of file data, and entries of any kind."""

    max_bytes: int
    max_entries: int


async def check_digest(archive: Path, *, sha256: str, size: int) -> None:
    """Refuse the file `archive` unless it is `size` bytes whose SHA-256 is `sha256`.

    Read a megabyte at a time, so a large archive never sits in memory.

    Cancellation: a plain checkpoint after every megabyte hashed.
    """
    digest = hashlib.sha256()
    with archive.open("rb") as source:
        length = os.fstat(source.fileno()).st_size
        if length != size:
            raise ContentRefused(f"shipped content {sha256[:12]} has {length} bytes, not the {size} the job names")
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            await trio.lowlevel.checkpoint()
    if digest.hexdigest() != sha256:
        raise ContentRefused(f"shipped content does not match its digest: sha256 {digest.hexdigest()}, not {sha256}")


def _clean_name(name: str) -> str:
    """The entry's path inside the tree, or a refusal for an absolute path or a `..`."""
    if name.startswith("/"):
        raise ContentRefused(f"shipped content refused: {name[:200]!r} is an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ContentRefused(f"shipped content refused: {name[:200]!r} contains '..'")
    if "\0" in name:
        raise ContentRefused("shipped content refused: an entry name contains NUL")
    return "/".join(parts)


def plan(archive: tarfile.TarFile, limits: ContentLimits) -> list[tuple[str, tarfile.TarInfo]]:
    """Every entry of `archive` with its clean path, checked before anything is written.

    Refused: absolute paths, `..`, hard links, devices, FIFOs and other special files,
    symbolic links that are absolute, lead outside the tree or pass through another
    symbolic link, entries under a symbolic link, an entry named twice, and more than
    `limits` allow. The links are judged once every entry is known, so the order of the
    entries changes nothing.
    """
    entries: list[tuple[str, tarfile.TarInfo]] = []
    names: set[str] = set()
    links: set[str] = set()
    total = 0
    for member in archive:
        if len(entries) >= limits.max_entries:
            raise ContentRefused(f"shipped content refused: more than {limits.max_entries} entries")
        name = _clean_name(member.name)
        if not name:
            if member.isdir():
                continue
            raise ContentRefused(f"shipped content refused: {member.name[:200]!r} names the tree itself")
        if name in names:
            raise ContentRefused(f"shipped content refused: {name[:200]!r} appears twice")
        if member.issym():
            if member.linkname.startswith("/"):
                raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} is absolute")
            if not member.linkname or "\0" in member.linkname:
                raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} has no usable target")
            links.add(name)
        elif member.islnk():
            raise ContentRefused(f"shipped content refused: {name[:200]!r} is a hard link")
        elif member.isreg():
            total += member.size
            if total > limits.max_bytes:
                raise ContentRefused(f"shipped content refused: more than {limits.max_bytes} bytes once unpacked")
        elif not member.isdir():
            raise ContentRefused(f"shipped content refused: {name[:200]!r} is a device, FIFO or other special file")
        names.add(name)
        entries.append((name, member))
    for name, member in entries:
        parents = name.split("/")[:-1]
        if any("/".join(parents[: depth + 1]) in links for depth in range(len(parents))):
            raise ContentRefused(f"shipped content refused: {name[:200]!r} lies under a symbolic link")
        if member.issym():
            _check_link(name, member.linkname, links)
    return entries


def _check_link(name: str, target: str, links: set[str]) -> None:
    """Refuse a link whose target leaves the tree, or passes through another link of the archive.

    The target is followed as the kernel will, one part at a time from the link's own
    directory. A `..` after another link would climb from wherever that link leads, not from
    where its name sits, so no link may stand before the last part of a target: then
    reading the target by name is exactly what the kernel does. A link as the last part is
    fine, as it is itself checked the same way.
    """
    where = name.split("/")[:-1]
    parts = [part for part in target.split("/") if part not in ("", ".")]
    for index, part in enumerate(parts):
        if part == "..":
            if not where:
                raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} leads outside the tree")
            where.pop()
            continue
        where.append(part)
        passed = "/".join(where)
        if index < len(parts) - 1 and passed in links:
            raise ContentRefused(
                f"shipped content refused: symbolic link {name[:200]!r} leads through symbolic link {passed[:200]!r}"
            )


async def unpack(archive_path: Path, target: Path, limits: ContentLimits) -> None:
    """Unpack the tar archive in the file `archive_path` into the empty directory `target`.

    Every entry is checked first (`plan`), so a refused archive writes nothing. Files are
    created new (never through a link), with their modes but never setuid, setgid or
    sticky; directories and files stay readable by the worker. Symbolic links come last,
    and once all of them exist each is resolved on disk and checked once more against the
    real tree. The caller removes `target` when this raises.

    Cancellation: a plain checkpoint after every megabyte written.
    """
    try:
        archive = tarfile.open(archive_path, mode="r:")  # noqa: SIM115 - closed by the block below
    except tarfile.TarError as exc:
        raise ContentRefused(f"shipped content is not a valid tar archive: {exc}") from None
    with archive:
        try:
            entries = plan(archive, limits)
        except tarfile.TarError as exc:
            raise ContentRefused(f"shipped content is not a valid tar archive: {exc}") from None
        root = _real(target)
        modes: list[tuple[str, int]] = []
        for name, member in entries:
            path = os.path.join(root, name)
            if member.isdir():
                os.makedirs(path, mode=0o700, exist_ok=True)
                modes.append((path, (member.mode & 0o777) | 0o700))
            elif member.isreg():
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                await _write_file(archive, member, path)
        links = [(name, member) for name, member in entries if member.issym()]
        for name, member in links:
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.symlink(member.linkname, path)
        # Once all of them exist: a link may lead through one made after it.
        for name, _ in links:
            if not _inside(root, os.path.join(root, name)):
                raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} leads outside the tree")
        for path, mode in reversed(modes):
            os.chmod(path, mode)


def _real(path: str | Path) -> str:
    # Synchronous on purpose: a few stat calls, no waiting.
    return os.path.realpath(path)


def _inside(root: str, path: str) -> bool:
    """Whether `path`, with every link resolved on disk, is `root` or lies under it."""
    # A loop of links leaves the rest of the path unresolved, `..` included: judged as written.
    real = os.path.normpath(_real(path))
    return real == root or real.startswith(root + os.sep)


async def _write_file(archive: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
    source = archive.extractfile(member)
    if source is None:  # pragma: no cover - a regular member always has a file
        raise ContentRefused(f"shipped content refused: {member.name[:200]!r} cannot be read")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        while chunk := source.read(_CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(descriptor, view) :]
            await trio.lowlevel.checkpoint()
    finally:
        os.close(descriptor)
    # Modes are kept, but never setuid, setgid or sticky, and always readable by the worker.
    os.chmod(path, (member.mode & 0o777) | 0o400)
