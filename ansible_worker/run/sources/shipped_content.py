"""Check and unpack the tar archive a job ships, refusing anything that could leave its directory."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import trio

from ansible_worker.run.sources.archive_headers import open_archive
from ansible_worker.run.sources.archive_plan import ContentLimits, ContentRefused, plan

__all__ = ["ContentLimits", "ContentRefused", "check_digest", "open_archive", "plan", "unpack"]

# Bytes hashed or written between checkpoints: about a millisecond of work each.
_CHUNK = 1 << 20
# Entries written between checkpoints: a few milliseconds of work at most, even with paths
# 256 levels deep.
_CHECKPOINT_EVERY = 32


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


async def unpack(archive_path: Path, target: Path, limits: ContentLimits) -> None:
    """Unpack the tar archive in the file `archive_path` into the empty directory `target`.

    Every entry is checked first (`plan`), so a refused archive writes nothing. Files are
    created new (never through a link), with their modes but never setuid, setgid or
    sticky; directories and files stay readable by the worker. Symbolic links come last,
    and once all of them exist each is resolved on disk and checked once more against the
    real tree. The caller removes `target` when this raises.

    Errors: `ContentRefused` for every problem of the archive, also one only writing finds
    (an entry the file system refuses, data cut short); it names the entry, not the cache.

    Cancellation: a plain checkpoint after every megabyte or few hundred entries written.
    """
    with open_archive(archive_path) as archive:
        entries = await plan(archive, limits)
        root = _real(target)
        name = ""
        try:
            await _write_all(archive, entries, root)
            links = [(name, member) for name, member in entries if member.issym()]
            for number, (name, member) in enumerate(links):
                path = os.path.join(root, name)
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                os.symlink(member.linkname, path)
                if number % _CHECKPOINT_EVERY == _CHECKPOINT_EVERY - 1:
                    await trio.lowlevel.checkpoint()
        except OSError as exc:
            raise ContentRefused(
                f"shipped content refused: {name[:200]!r} cannot be written: {exc.strerror or type(exc).__name__}"
            ) from None
        except tarfile.TarError as exc:
            raise ContentRefused(f"shipped content is not a valid tar archive: {exc}") from None
        # Once all of them exist: a link may lead through one made after it.
        for name, _ in links:
            if not _inside(root, os.path.join(root, name)):
                raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} leads outside the tree")
            # Each is a walk of up to 40 links of up to 256 levels on disk.
            await trio.lowlevel.checkpoint()


async def _write_all(archive: tarfile.TarFile, entries: list[tuple[str, tarfile.TarInfo]], root: str) -> None:
    """Make the directories and files of `entries` under `root`, then give the directories their modes."""
    modes: list[tuple[str, int]] = []
    for number, (name, member) in enumerate(entries):
        path = os.path.join(root, name)
        try:
            if member.isdir():
                os.makedirs(path, mode=0o700, exist_ok=True)
                modes.append((path, (member.mode & 0o777) | 0o700))
            elif member.isreg():
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                await _write_file(archive, member, path)
        except OSError as exc:
            raise ContentRefused(
                f"shipped content refused: {name[:200]!r} cannot be written: {exc.strerror or type(exc).__name__}"
            ) from None
        if number % _CHECKPOINT_EVERY == _CHECKPOINT_EVERY - 1:
            await trio.lowlevel.checkpoint()
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
    written = 0
    try:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > member.size:  # pragma: no cover - tarfile reads a member's size, no more
                raise ContentRefused(f"shipped content refused: {member.name[:200]!r} holds more than its size")
            view = memoryview(chunk)
            while view:
                view = view[os.write(descriptor, view) :]
            await trio.lowlevel.checkpoint()
    finally:
        os.close(descriptor)
    # Modes are kept, but never setuid, setgid or sticky, and always readable by the worker.
    os.chmod(path, (member.mode & 0o777) | 0o400)
