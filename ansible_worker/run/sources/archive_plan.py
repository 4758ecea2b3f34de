"""Judge every entry of a shipped tar archive before anything is written: paths, kinds, links and bounds."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from ansible_worker.run.errors import JobRefusedError

# Bytes of headers read between checkpoints: about a millisecond of work each.
_CHUNK = 1 << 20
# Entries judged between checkpoints: a few milliseconds of work at most, even with paths
# 256 levels deep.
_CHECKPOINT_EVERY = 32

# A name part, a path inside the tree (and a link's target), and how deep a path may go.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 256
# Linux's MAXSYMLINKS: a path that leads through more links fails with ELOOP.
_MAX_LINKS_FOLLOWED = 40
_DIRECTORY, _FILE, _LINK = "directory", "file", "link"


class ContentRefused(JobRefusedError):
    """Shipped content that the worker will not unpack; the message names the entry and the rule."""


@dataclass(frozen=True)
class ContentLimits:
    """Bounds on an archive once unpacked: bytes of file data, and entries of any kind."""

    max_bytes: int
    max_entries: int


def _clean_name(name: str) -> str:
    """The entry's path inside the tree, or a refusal for an absolute path, a `..`, or a path too long or deep."""
    if name.startswith("/"):
        raise ContentRefused(f"shipped content refused: {name[:200]!r} is an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ContentRefused(f"shipped content refused: {name[:200]!r} contains '..'")
    if "\0" in name:
        raise ContentRefused("shipped content refused: an entry name contains NUL")
    clean = "/".join(parts)
    # The bounds of Linux file systems (NAME_MAX, PATH_MAX), and a depth that every walk of
    # the tree (size, modes, removal) can take.
    if len(os.fsencode(clean)) > MAX_PATH_BYTES:
        raise ContentRefused(f"shipped content refused: {clean[:200]!r}… is longer than {MAX_PATH_BYTES} bytes")
    if len(parts) > MAX_DEPTH:
        raise ContentRefused(f"shipped content refused: {clean[:200]!r}… is more than {MAX_DEPTH} levels deep")
    for part in parts:
        # A character is at most 4 bytes: only a part of more than 63 may be too long.
        if len(part) > MAX_NAME_BYTES // 4 and len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise ContentRefused(
                f"shipped content refused: {clean[:200]!r} has a name longer than {MAX_NAME_BYTES} bytes"
            )
    return clean


@dataclass
class _Paths:
    """Every path of an archive as a node: its entries and the directories they imply, without building prefixes.

    A node is found from its parent's number and its name part, so walking a path costs
    its length once, however deep it is; the nodes are bounded by `max_content_entries`.
    """

    index: dict[tuple[int, str], int] = field(default_factory=dict)
    parent: list[int] = field(default_factory=lambda: [-1])
    kind: list[str] = field(default_factory=lambda: [_DIRECTORY])
    # The entry of each node named in the archive; for an implied directory, the first entry under it.
    name: list[str] = field(default_factory=lambda: [""])
    listed: list[bool] = field(default_factory=lambda: [True])

    def add(self, name: str, kind: str) -> int:
        """Add the entry `name` of `kind`; refuse one under a file or link, or named twice."""
        node = 0
        *directories, last = name.split("/")
        for part in directories:
            child = self.index.get((node, part))
            if child is None:
                child = self._new(node, part, _DIRECTORY, name, listed=False)
            elif self.kind[child] != _DIRECTORY:
                raise _under(name, self.kind[child], self.name[child])
            node = child
        existing = self.index.get((node, last))
        if existing is None:
            return self._new(node, last, kind, name, listed=True)
        if self.listed[existing]:
            raise ContentRefused(f"shipped content refused: {name[:200]!r} appears twice")
        # A directory some earlier entry implied: it may be listed as one, nothing else.
        if kind != _DIRECTORY:
            raise _under(self.name[existing], kind, name)
        self.listed[existing] = True
        self.name[existing] = name
        return existing

    def _new(self, parent: int, part: str, kind: str, name: str, *, listed: bool) -> int:
        node = len(self.parent)
        self.index[(parent, part)] = node
        self.parent.append(parent)
        self.kind.append(kind)
        self.name.append(name)
        self.listed.append(listed)
        return node

    @property
    def count(self) -> int:
        """Entries and the directories they imply, the tree itself not counted."""
        return len(self.parent) - 1


def _under(name: str, kind: str, holder: str) -> ContentRefused:
    if kind == _LINK:
        return ContentRefused(f"shipped content refused: {name[:200]!r} lies under a symbolic link")
    return ContentRefused(f"shipped content refused: {name[:200]!r} lies under {holder[:200]!r}, which is a file")


async def plan(archive: tarfile.TarFile, limits: ContentLimits) -> list[tuple[str, tarfile.TarInfo]]:
    """Every entry of `archive` with its clean path, checked before anything is written.

    Refused: absolute paths, `..`, names longer than 255 bytes, paths longer than 4096
    bytes or deeper than 256 levels, negative sizes, sparse files, hard links, devices,
    FIFOs and other special files, symbolic links that are absolute, lead outside the tree
    or pass through another symbolic link, entries under a symbolic link or a file, an
    entry named twice, and more than `limits` allow: every header counts as an entry (`.`
    too), and so does every directory an entry implies. The links are judged once every
    entry is known, so the order of the entries changes nothing. Each check costs the
    length of the path it looks at, whatever the depth.

    Cancellation: a plain checkpoint every few hundred entries, or megabyte of headers read.
    """
    listing = _Listing(limits)
    since = 0
    offset = 0
    for member in _members(archive):
        if not listing.take(member):
            continue
        since += 1
        if since >= _CHECKPOINT_EVERY or archive.offset - offset >= _CHUNK:
            since, offset = 0, archive.offset
            await trio.lowlevel.checkpoint()
    await _check_links(listing.paths, listing.links)
    return listing.entries


def _members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of `archive` as tarfile reads them, a read error becoming a refusal."""
    iterator = iter(archive)
    while True:
        try:
            member = next(iterator)
        except StopIteration:
            return
        except tarfile.TarError as exc:
            raise ContentRefused(f"shipped content is not a valid tar archive: {exc}") from None
        yield member


@dataclass
class _Listing:
    """The entries of an archive judged so far: their paths, links, bytes, and the `.` entries counted."""

    limits: ContentLimits
    entries: list[tuple[str, tarfile.TarInfo]] = field(default_factory=list)
    paths: _Paths = field(default_factory=lambda: _Paths())
    links: list[tuple[int, str, str]] = field(default_factory=list)
    total: int = 0
    dots: int = 0

    def take(self, member: tarfile.TarInfo) -> bool:
        """Judge one header; whether it is an entry to unpack (a `.` directory is counted, not kept)."""
        if self.paths.count + self.dots >= self.limits.max_entries:
            raise ContentRefused(f"shipped content refused: more than {self.limits.max_entries} entries")
        if member.size < 0:
            raise ContentRefused(f"shipped content refused: {member.name[:200]!r} has a negative size")
        if member.issparse() or any(key.startswith("GNU.sparse.") for key in member.pax_headers):
            raise ContentRefused(f"shipped content refused: {member.name[:200]!r} is a sparse file")
        # Read already; every later entry would keep its own copy.
        member.pax_headers = {}
        name = _clean_name(member.name)
        if not name:
            self.dots += 1
            if member.isdir():
                return False
            raise ContentRefused(f"shipped content refused: {member.name[:200]!r} names the tree itself")
        self._add(name, member)
        if self.paths.count + self.dots > self.limits.max_entries:
            raise ContentRefused(f"shipped content refused: more than {self.limits.max_entries} entries")
        self.entries.append((name, member))
        return True

    def _add(self, name: str, member: tarfile.TarInfo) -> None:
        """Place the entry `name` in the tree by its kind; refuse a kind or a size the worker does not unpack."""
        if member.issym():
            _check_link_target(name, member.linkname)
            self.links.append((self.paths.add(name, _LINK), name, member.linkname))
        elif member.islnk():
            raise ContentRefused(f"shipped content refused: {name[:200]!r} is a hard link")
        elif member.isreg():
            self.total += member.size
            if self.total > self.limits.max_bytes:
                raise ContentRefused(f"shipped content refused: more than {self.limits.max_bytes} bytes once unpacked")
            self.paths.add(name, _FILE)
        elif member.isdir():
            self.paths.add(name, _DIRECTORY)
        else:
            raise ContentRefused(f"shipped content refused: {name[:200]!r} is a device, FIFO or other special file")


def _check_link_target(name: str, target: str) -> None:
    """Refuse a symbolic link whose target is absolute, empty, holds NUL or is too long, before the tree is known."""
    if target.startswith("/"):
        raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} is absolute")
    if not target or "\0" in target:
        raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} has no usable target")
    if len(os.fsencode(target)) > MAX_PATH_BYTES:
        raise ContentRefused(
            f"shipped content refused: symbolic link {name[:200]!r} has a target longer than {MAX_PATH_BYTES} bytes"
        )


async def _check_links(paths: _Paths, links: list[tuple[int, str, str]]) -> None:
    """Once every entry is known: refuse a link that leaves the tree, passes through a link, or starts a long chain."""
    # A link whose target is another link of the archive: the node it leads on to.
    onto: dict[int, int] = {}
    for number, (node, name, target) in enumerate(links):
        ends = _check_link(paths, node, name, target)
        if ends is not None and paths.kind[ends] == _LINK:
            onto[node] = ends
        if number % _CHECKPOINT_EVERY == _CHECKPOINT_EVERY - 1:
            await trio.lowlevel.checkpoint()
    for number, (node, name, _) in enumerate(links):
        # The kernel follows at most 40 links in one path; a longer chain (or a loop) leads nowhere,
        # and following it on disk would cost the square of its length.
        step, hops = node, 0
        while step in onto:
            step, hops = onto[step], hops + 1
            if hops >= _MAX_LINKS_FOLLOWED:
                raise ContentRefused(
                    f"shipped content refused: symbolic link {name[:200]!r} leads through more than"
                    f" {_MAX_LINKS_FOLLOWED} symbolic links"
                )
        if number % _CHECKPOINT_EVERY == _CHECKPOINT_EVERY - 1:
            await trio.lowlevel.checkpoint()


def _check_link(paths: _Paths, node: int, name: str, target: str) -> int | None:
    """Refuse a link whose target leaves the tree, or passes through another link; the node it names, if any.

    The target is followed as the kernel will, one part at a time from the link's own
    directory. A `..` after another link would climb from wherever that link leads, not from
    where its name sits, so no link may stand before the last part of a target: then
    reading the target by name is exactly what the kernel does. A link as the last part is
    fine, as it is itself checked the same way.
    """
    where = paths.parent[node]
    # Parts below `where` that name nothing in the archive: no link can stand there.
    beyond = 0
    parts = [part for part in target.split("/") if part not in ("", ".")]
    for index, part in enumerate(parts):
        if part == "..":
            if beyond:
                beyond -= 1
            elif where == 0:
                raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} leads outside the tree")
            else:
                where = paths.parent[where]
            continue
        if beyond:
            beyond += 1
            continue
        child = paths.index.get((where, part))
        if child is None:
            beyond = 1
            continue
        if index < len(parts) - 1 and paths.kind[child] == _LINK:
            passed = paths.name[child]
            raise ContentRefused(
                f"shipped content refused: symbolic link {name[:200]!r} leads through symbolic link {passed[:200]!r}"
            )
        where = child
    return None if beyond else where
