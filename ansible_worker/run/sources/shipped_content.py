"""Check and unpack the tar archive a job ships, refusing anything that could leave its directory."""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ansible_worker.run.errors import JobRefusedError

# Bytes hashed or written between checkpoints: about a millisecond of work each.
_CHUNK = 1 << 20
# Entries judged or written between checkpoints: a few milliseconds of work at most, even
# with paths 256 levels deep.
_CHECKPOINT_EVERY = 32

# A name part, a path inside the tree (and a link's target), and how deep a path may go.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 256
# Extended headers (GNU long names, PAX attributes) are read whole into memory by tarfile:
# each is bounded, and so are all of them together and the global ones, which every later
# entry copies.
MAX_EXTENDED_HEADER_BYTES = 65_536
MAX_EXTENDED_TOTAL_BYTES = 16 << 20
MAX_GLOBAL_HEADER_BYTES = 4096
_MAX_EXTENDED_IN_A_ROW = 8
# Linux's MAXSYMLINKS: a path that leads through more links fails with ELOOP.
_MAX_LINKS_FOLLOWED = 40
_EXTENDED = frozenset(
    (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
)
_DIRECTORY, _FILE, _LINK = "directory", "file", "link"


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


class _Header(tarfile.TarInfo):
    """A tar header that refuses, before tarfile reads on, what would cost memory or time out of proportion.

    `_proc_member` is the hook tarfile names for subclasses: it sees each raw header,
    extended ones included, before their blocks are read.
    """

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size < 0:
            raise ContentRefused(f"shipped content refused: an entry has a negative size ({self.size})")
        if isinstance(archive, _Archive):
            archive.extended_in_a_row = archive.extended_in_a_row + 1 if self.type in _EXTENDED else 0
            if self.type in _EXTENDED:
                archive.note_extended(self)
        member: tarfile.TarInfo = tarfile.TarInfo._proc_member(self, archive)  # type: ignore[attr-defined]
        return member

    # GNU's sparse formats: tarfile would read their maps whole, and write holes as zeros.
    def _proc_sparse(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        raise ContentRefused("shipped content refused: sparse files are not accepted")

    def _proc_gnusparse_00(self, *_: object) -> None:
        raise ContentRefused("shipped content refused: sparse files are not accepted")

    _proc_gnusparse_01 = _proc_gnusparse_00
    _proc_gnusparse_10 = _proc_gnusparse_00


class _Archive(tarfile.TarFile):
    """A tar archive read through `_Header`, keeping count of its extended headers."""

    extended_in_a_row = 0
    extended_bytes = 0
    global_bytes = 0

    def note_extended(self, header: tarfile.TarInfo) -> None:
        """Refuse an extended header (a long name, PAX attributes) too large, or too many of them."""
        if header.size > MAX_EXTENDED_HEADER_BYTES:
            raise ContentRefused(
                f"shipped content refused: an extended header of {header.size} bytes"
                f" (at most {MAX_EXTENDED_HEADER_BYTES})"
            )
        if self.extended_in_a_row > _MAX_EXTENDED_IN_A_ROW:
            raise ContentRefused(
                f"shipped content refused: more than {_MAX_EXTENDED_IN_A_ROW} extended headers before one entry"
            )
        self.extended_bytes += header.size
        if self.extended_bytes > MAX_EXTENDED_TOTAL_BYTES:
            raise ContentRefused(
                f"shipped content refused: more than {MAX_EXTENDED_TOTAL_BYTES} bytes of extended headers"
            )
        if header.type == tarfile.XGLTYPE:
            # Copied into every entry that follows.
            self.global_bytes += header.size
            if self.global_bytes > MAX_GLOBAL_HEADER_BYTES:
                raise ContentRefused(
                    f"shipped content refused: more than {MAX_GLOBAL_HEADER_BYTES} bytes of global headers"
                )


def open_archive(path: Path) -> tarfile.TarFile:
    """The tar archive in the file `path`, read with the bounds of `_Header`.

    Errors: `ContentRefused` for an archive tarfile cannot read, or one whose first
    headers are refused.
    """
    try:
        return _Archive.open(path, mode="r:", tarinfo=_Header)
    except tarfile.TarError as exc:
        raise ContentRefused(f"shipped content is not a valid tar archive: {exc}") from None


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
    entries: list[tuple[str, tarfile.TarInfo]] = []
    paths = _Paths()
    links: list[tuple[int, str, str]] = []
    # A link whose target is another link of the archive: the node it leads on to.
    onto: dict[int, int] = {}
    total = 0
    dots = 0
    since = 0
    offset = 0
    iterator = iter(archive)
    while True:
        try:
            member = next(iterator)
        except StopIteration:
            break
        except tarfile.TarError as exc:
            raise ContentRefused(f"shipped content is not a valid tar archive: {exc}") from None
        if paths.count + dots >= limits.max_entries:
            raise ContentRefused(f"shipped content refused: more than {limits.max_entries} entries")
        if member.size < 0:
            raise ContentRefused(f"shipped content refused: {member.name[:200]!r} has a negative size")
        if member.issparse() or any(key.startswith("GNU.sparse.") for key in member.pax_headers):
            raise ContentRefused(f"shipped content refused: {member.name[:200]!r} is a sparse file")
        # Read already; every later entry would keep its own copy.
        member.pax_headers = {}
        name = _clean_name(member.name)
        if not name:
            dots += 1
            if member.isdir():
                continue
            raise ContentRefused(f"shipped content refused: {member.name[:200]!r} names the tree itself")
        if member.issym():
            if member.linkname.startswith("/"):
                raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} is absolute")
            if not member.linkname or "\0" in member.linkname:
                raise ContentRefused(f"shipped content refused: symbolic link {name[:200]!r} has no usable target")
            if len(os.fsencode(member.linkname)) > MAX_PATH_BYTES:
                raise ContentRefused(
                    f"shipped content refused: symbolic link {name[:200]!r} has a target longer than"
                    f" {MAX_PATH_BYTES} bytes"
                )
            links.append((paths.add(name, _LINK), name, member.linkname))
        elif member.islnk():
            raise ContentRefused(f"shipped content refused: {name[:200]!r} is a hard link")
        elif member.isreg():
            total += member.size
            if total > limits.max_bytes:
                raise ContentRefused(f"shipped content refused: more than {limits.max_bytes} bytes once unpacked")
            paths.add(name, _FILE)
        elif member.isdir():
            paths.add(name, _DIRECTORY)
        else:
            raise ContentRefused(f"shipped content refused: {name[:200]!r} is a device, FIFO or other special file")
        if paths.count + dots > limits.max_entries:
            raise ContentRefused(f"shipped content refused: more than {limits.max_entries} entries")
        entries.append((name, member))
        since += 1
        if since >= _CHECKPOINT_EVERY or archive.offset - offset >= _CHUNK:
            since, offset = 0, archive.offset
            await trio.lowlevel.checkpoint()
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
    return entries


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
