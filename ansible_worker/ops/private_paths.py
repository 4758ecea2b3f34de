"""Whether another local user could change what a directory path leads to: the owner, mode and kind of each part.

A directory is only as private as the path to it: whoever may rename an entry of any
directory on the way can put a directory of their own in its place. Standard library only,
so that both the settings and the run layer can use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Others may add entries to a sticky directory (/tmp) but may not rename or remove ours.
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def tamper_risk(path: Path, *, as_parent: bool = False, single_user: bool = False) -> str | None:
    """What would let another local user replace what `path` leads to; None when only this user and root can.

    Every part of the absolute path, from `/` down, that exists must be a directory (not a
    symbolic link: a link is only as safe as whoever may change it and what it points to,
    so the real path is asked for), owned by this process's user or root, and writable by
    no one else. A sticky directory writable by others is accepted above `path` (never
    `path` itself, unless `as_parent`: then `path` is where the worker makes a directory of
    its own), because others cannot rename or remove what they do not own in it. Parts
    that do not exist yet pass: the worker makes them itself, mode 0700.

    With `single_user` (the operator says every process that can reach these directories
    runs as this user, as in a pod whose volumes Kubernetes makes 0777), who may write a
    directory is not judged; its owner and its kind still are.

    Synchronous: a few `lstat` calls.
    """
    absolute = Path(os.path.abspath(path))
    parts = [*reversed(absolute.parents), absolute]
    uid = os.geteuid()
    for depth, part in enumerate(parts):
        try:
            info = os.lstat(part)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{part} cannot be examined: {exc.strerror or exc}"
        if stat.S_ISLNK(info.st_mode):
            return f"{part} is a symbolic link (give the real path)"
        if not stat.S_ISDIR(info.st_mode):
            return f"{part} is not a directory"
        if info.st_uid not in (uid, 0):
            return f"{part} belongs to another user (uid {info.st_uid})"
        above = depth < len(parts) - 1 or as_parent
        if single_user:
            continue
        if info.st_mode & _WRITABLE_BY_OTHERS and not (above and info.st_mode & stat.S_ISVTX):
            who = "every user" if info.st_mode & stat.S_IWOTH else "its group"
            return f"{part} may be written by {who} (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def make_private_directory(path: Path) -> None:
    """Make `path` and any missing parent, each mode 0700 (whatever the umask allows of that).

    Unlike `Path.mkdir(parents=True)`, which makes the parents with the umask's mode, so
    that a umask of 0 would leave them open to every user.

    Errors: `OSError` when a part cannot be made, or exists and is not a directory.
    """
    absolute = Path(os.path.abspath(path))
    for part in [*reversed(absolute.parents), absolute]:
        if part.is_dir():
            continue
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            # Made meanwhile by someone else: `tamper_risk` says whether that is acceptable.
            if not part.is_dir():
                raise
