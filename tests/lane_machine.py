"""The machine the unprivileged deployments run on: the image's user, its files and environment, a system venv.

What the Containerfile says (its `USER`, its `ENV`) is read from it, so the tests deploy the
worker as the image does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).parent.parent
LOCK = REPO / "constraints.txt"


def containerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Containerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def image_environment() -> dict[str, str]:
    """The variables the image's `ENV` sets."""
    found: dict[str, str] = {}
    for instruction, arguments in containerfile():
        if instruction == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                found[name] = value
    return found


# The image's user, as its USER says; created on the test machine as the image creates it.
WORKER_UID = int(next(arguments for instruction, arguments in containerfile() if instruction == "USER").split(":")[0])
WORKER_USER = "ansible-worker"
SYSTEM_PYTHON = "/usr/bin/python3"
# Shared by the runs of one checkout; root's own, and checked to be before root runs anything in it.
LANE_ROOT = Path("/var/tmp/ansible-worker-tests")


def owned_by_worker(directory: Path) -> bool:
    # Handed over on purpose (`hand_over`): every entry is the worker's.
    return all(path.lstat().st_uid == WORKER_UID for path in [directory, *directory.rglob("*")])


def let_worker_read(file: Path) -> None:
    """As a secret mounted for the worker's group: root's file, readable to the group, never writable."""
    mode = file.stat().st_mode
    if not mode & stat.S_IROTH:
        os.chown(file, -1, WORKER_UID)
        file.chmod(stat.S_IMODE(mode) | stat.S_IRGRP)


def give_directory(directory: Path) -> None:
    """A directory of the worker's own (0700), made now if missing."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    chown_tree(directory, WORKER_UID, WORKER_UID)
    directory.chmod(0o700)


def chown_tree(directory: Path, uid: int, gid: int) -> None:
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)


def ensure_worker_user() -> None:
    """The image's user and group, 10001, created once on this machine as the Containerfile creates them."""
    with contextlib.suppress(KeyError):
        pwd.getpwuid(WORKER_UID)
        return
    command = [
        "useradd",
        "--uid",
        str(WORKER_UID),
        "--user-group",
        "--no-create-home",
        "--home-dir",
        image_environment()["HOME"],
        "--shell",
        "/usr/sbin/nologin",
        WORKER_USER,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    # Another test process may have created it meanwhile.
    try:
        pwd.getpwuid(WORKER_UID)
    except KeyError:
        raise RuntimeError(f"could not create the user {WORKER_UID}: {result.stderr.strip()}") from None


def _root_directory(path: Path) -> Path:
    """`path` as a directory of root's that no one else may change (made if missing); refused otherwise."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise RuntimeError(f"{path} must be a directory of root's that others cannot write: refusing to use it")
    return path


def _source_digest() -> str:
    """What the system venv was built from: the lock and the project's files."""
    digest = hashlib.sha256()
    for path in [LOCK, REPO / "pyproject.toml", *sorted((REPO / "ansible_worker").rglob("*"))]:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def system_venv() -> Path:
    """A venv of the system Python that the worker's user can read, with this checkout installed from the lock.

    Made once per checkout and renewed when the lock or the project's files change; test
    processes running at once wait for each other here.
    """
    root = _root_directory(LANE_ROOT)
    checkout = _root_directory(root / hashlib.sha256(str(REPO.resolve()).encode()).hexdigest()[:16])
    venv = checkout / "venv"
    stamp = checkout / "installed"
    wanted = _source_digest()
    with (checkout / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted:
            return venv
        stamp.unlink(missing_ok=True)
        if not (venv / "bin" / "python").exists():
            subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-c", str(LOCK), str(REPO)], check=True)
        # The project itself again, whatever pip thought of its unchanged version number.
        subprocess.run([*pip, "--no-deps", "--force-reinstall", str(REPO)], check=True)
        stamp.write_text(wanted)
    return venv


def private_base() -> Path:
    """A directory for one test's files that the worker's user can reach (not write), removed by `remove_base`."""
    base = Path(tempfile.mkdtemp(prefix="ansible-worker-lane-", dir="/tmp"))
    base.chmod(0o755)
    return base


def remove_base(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
