"""Open a shipped tar archive through headers that refuse what tarfile would read out of proportion."""

from __future__ import annotations

import tarfile
from pathlib import Path

from ansible_worker.run.sources.archive_plan import ContentRefused

# Extended headers (GNU long names, PAX attributes) are read whole into memory by tarfile:
# each is bounded, and so are all of them together and the global ones, which every later
# entry copies.
MAX_EXTENDED_HEADER_BYTES = 65_536
MAX_EXTENDED_TOTAL_BYTES = 16 << 20
MAX_GLOBAL_HEADER_BYTES = 4096
_MAX_EXTENDED_IN_A_ROW = 8
_EXTENDED = frozenset(
    (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
)


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
