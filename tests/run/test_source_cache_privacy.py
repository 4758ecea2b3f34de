"""The source cache belongs to the worker's user alone: a path others could change is refused at start.

Another local user who may rename any directory on the way to the cache could put a tree of
their own under the digest of a signed job. Each case starts the real `ansible-worker run`
and expects it to stop at once, naming `worker.source_cache`; the default cache is a new
private directory that no one could have made beforehand.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.conftest import PLAYBOOKS, Broker, client_for, worker_config, worker_process
from tests.run.test_shipped_content import SHOW

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")


def other_users(tmp_path: Path) -> tuple[dict[str, str], str]:
    cache = tmp_path / "theirs"
    cache.mkdir(mode=0o700)
    os.chown(cache, NOBODY, NOBODY)
    return {"source_cache": str(cache)}, f"{cache} belongs to another user (uid {NOBODY})"


def open_root(tmp_path: Path) -> tuple[dict[str, str], str]:
    cache = tmp_path / "open"
    cache.mkdir()
    cache.chmod(0o777)
    return {"source_cache": str(cache)}, f"{cache} may be written by every user (mode 777)"


def open_parent(tmp_path: Path) -> tuple[dict[str, str], str]:
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    (parent / "cache").mkdir(mode=0o700)
    return {"source_cache": str(parent / "cache")}, f"{parent} may be written by every user (mode 777)"


def group_parent(tmp_path: Path) -> tuple[dict[str, str], str]:
    parent = tmp_path / "team"
    parent.mkdir()
    parent.chmod(0o770)
    # Not there yet: the worker would make it, inside a directory its group may rename things in.
    return {"source_cache": str(parent / "cache")}, f"{parent} may be written by its group (mode 770)"


def linked_part(tmp_path: Path) -> tuple[dict[str, str], str]:
    real = tmp_path / "real"
    (real / "cache").mkdir(parents=True, mode=0o700)
    (tmp_path / "link").symlink_to(real)
    return {"source_cache": str(tmp_path / "link" / "cache")}, f"{tmp_path / 'link'} is a symbolic link"


def open_state_dir_parent(tmp_path: Path) -> tuple[dict[str, str], str]:
    parent = tmp_path / "var"
    parent.mkdir()
    parent.chmod(0o777)
    state = parent / "state"
    return {"state_dir": str(state)}, (
        f"{state / 'sources'} (the default, under worker.state_dir): {parent} may be written by every user"
    )


def trees_under(directory: Path) -> list[Path]:
    return list(directory.rglob("trees"))


def lexists(path: Path) -> bool:
    return os.path.lexists(path)


def inspect(cache: Path) -> tuple[int, int, list[str]]:
    """The cache directory's owner and mode, and the trees in it."""
    info = cache.lstat()
    return info.st_uid, stat.S_IMODE(info.st_mode), sorted(path.name for path in (cache / "trees").iterdir())


CASES: dict[str, Callable[[Path], tuple[dict[str, str], str]]] = {
    "other-users-directory": other_users,
    "open-root": open_root,
    "open-parent": open_parent,
    "group-writable-parent": group_parent,
    "symbolic-link": linked_part,
    "open-parent-of-state-dir": open_state_dir_parent,
}


@pytest.mark.parametrize(
    "case", [pytest.param(name, marks=as_root) if name == "other-users-directory" else name for name in CASES]
)
async def test_a_cache_others_could_change_is_refused_at_start(
    case: str, broker: Broker, playbook_dir: Path, tmp_path: Path
) -> None:
    worker, expected = CASES[case](tmp_path)
    config = worker_config(tmp_path / "config.json", broker, playbook_dir, "g-private", **worker)
    async with worker_process("run", "-c", str(config)) as process:
        with trio.fail_after(30):
            await process.process.wait()
        await process.wait_for_line("configuration error:")
    assert process.process.returncode == 2, process.lines
    (problem,) = [line.strip() for line in process.lines if "worker.source_cache:" in line]
    assert problem.startswith("worker.source_cache: ")
    assert expected in problem, problem
    assert "another local user could replace the trees jobs run from" in problem
    # Refused before it made anything there.
    assert trees_under(tmp_path) == []
    # `validate` says the same, without making anything either.
    with trio.fail_after(30):
        validated = await trio.run_process(
            [EXECUTABLE, "validate", "-c", str(config)], capture_stderr=True, check=False
        )
    assert validated.returncode == 2
    assert expected in validated.stderr.decode()


async def test_the_default_cache_is_a_new_private_directory(broker: Broker, playbook_dir: Path, tmp_path: Path) -> None:
    worker_id = "w-default-cache"
    # Where the cache used to go: a name anyone could make first, and fill with trees of their choosing.
    trap = Path(tempfile.gettempdir()) / f"ansible-worker-sources-{worker_id}"
    shutil.rmtree(trap, ignore_errors=True)
    trap.mkdir()
    trap.chmod(0o777)
    if os.geteuid() == 0:
        os.chown(trap, NOBODY, NOBODY)
    tree = tmp_path / "ship"
    tree.mkdir()
    (tree / "show.yml").write_text(SHOW)
    (tree / "message.txt").write_text("from the default cache")
    shutil.copy(PLAYBOOKS / "one_host.ini", tree / "one_host.ini")
    config = worker_config(
        tmp_path / "config.json", broker, playbook_dir, "g-default", worker_id=worker_id, allow_shipped_content=True
    )
    try:
        async with worker_process("run", "-c", str(config)) as process, client_for(broker, "g-default") as client:
            line = await process.wait_for_line("source cache in ")
            handle = await client.submit({"playbook": "show.yml", "inventory": "one_host.ini"}, ship=tree)
            with trio.fail_after(60):
                final = await handle.wait()
            found = re.search(r"source cache in (\S+) \(removed at exit\)", line)
            assert found is not None, line
            cache = Path(found.group(1))
            owner, mode, trees = inspect(cache)
            await process.stop()
        assert final["state"] == "success", final["error_message"]
        assert final["output"] == {"shipped": "from the default cache"}
        assert cache.parent == Path(tempfile.gettempdir())
        assert cache.name.startswith("ansible-worker-sources-")
        assert worker_id not in cache.name
        assert owner == os.geteuid()
        assert mode == 0o700
        assert handle.shipment is not None
        assert trees == [f"sha256-{handle.shipment.sha256}"]
        assert list(trap.iterdir()) == []
        assert not lexists(cache)
    finally:
        shutil.rmtree(trap, ignore_errors=True)
