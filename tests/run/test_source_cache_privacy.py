"""The source cache belongs to the worker's user alone: a path others could change is refused at start.

Another local user who may rename any directory on the way to the cache could put a tree of
their own under the digest of a signed job. Each case starts the real `ansible-worker run`
and expects it to stop at once, naming `worker.source_cache`; the default cache is a new
private directory that no one could have made beforehand.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.conftest import (
    PLAYBOOKS,
    Broker,
    client_for,
    make_settings,
    open_controller,
    running_worker,
    worker_config,
    worker_process,
)
from tests.run.test_job_sources import JOB, Origin, git, wait_for_task
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


MALLORY = 12345
PLANTED = """\
- name: Planted
  hosts: host1
  gather_facts: false
  tasks:
    - ansible.builtin.set_stats:
        data:
          who: another user
"""
REAL = PLANTED.replace("another user", "the worker itself")


def as_mallory(*argv: str) -> None:
    subprocess.run(argv, check=True, user=MALLORY, group=MALLORY, cwd="/", capture_output=True)


def reachable(base: Path) -> None:
    """`base` open to other users, with a directory for the origin repository in it."""
    base.chmod(0o755)
    (base / "o").mkdir()


@as_root
def fill_open_cache_as_another_user(cache: Path, base: Path, checkout: Path, commit: str) -> tuple[Path, Path]:
    """Make `cache` open to all and fill it as another user: planted trees, a lock, a mirror with hooks.

    The mirror, and the file its hooks would write if they ran.
    """
    for directory in (cache, cache / "trees", cache / "mirrors"):
        directory.mkdir()
        directory.chmod(0o777)
    planted = base / "planted.yml"
    planted.write_text(PLANTED)
    planted.chmod(0o644)
    for key in (f"git-{commit}", f"project-site-{commit}"):
        as_mallory("mkdir", str(cache / "trees" / key))
        as_mallory("cp", str(planted), str(cache / "trees" / key / "site.yml"))
        as_mallory("cp", str(checkout / "one_host.ini"), str(cache / "trees" / key / "one_host.ini"))
    (cache / "trees" / f"sha256-{'d' * 64}").symlink_to(base)
    # A lock file of theirs, which they could have kept locked.
    as_mallory("touch", str(cache / "lock"))
    mirror = cache / "mirrors" / "site.git"
    as_mallory("git", "init", "--quiet", "--bare", str(mirror))
    marker = base / "hook-ran"
    hook = base / "hook.sh"
    hook.write_text(f"#!/bin/sh\nid -u > {marker}\n")
    hook.chmod(0o755)
    for name in ("reference-transaction", "post-fetch", "pre-auto-gc"):
        as_mallory("cp", str(hook), str(mirror / "hooks" / name))
    return mirror, marker


async def test_what_another_user_left_in_the_cache_is_never_used(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ansible_worker.run.sources.run_trees")
    # Reachable by another user, as a cache that was once open to others would have been.
    base = Path(tempfile.mkdtemp())
    try:
        reachable(base)
        origin = Origin(base / "o")
        commit = origin.commit("1", files={"site.yml": REAL})
        checkout = base / "playbooks"
        git(base, "clone", "--quiet", str(origin.bare), str(checkout))
        # The cache was open to everyone for a while: another user filled it.
        cache = base / "cache"
        mirror, marker = fill_open_cache_as_another_user(cache, base, checkout, commit)
        # Then the operator fixed the modes, as the worker told them to.
        for directory in (cache, cache / "trees", cache / "mirrors"):
            directory.chmod(0o700)
        settings = make_settings(
            broker.port, checkout, "g-planted", source_cache=cache, projects={"site": {"url": origin.url}}
        )
        async with open_controller(broker, "g-planted") as controller, running_worker(settings):
            await controller.submit({"task_id": "own", "playbook": "site.yml", "inventory": "one_host.ini"})
            own = await controller.wait_terminal("own")
            await controller.submit(
                {"task_id": "proj", "playbook": "site.yml", "inventory": "one_host.ini", "project": "site"}
            )
            project = await controller.wait_terminal("proj")
            kept = sorted(path.name for path in (cache / "trees").iterdir())
            owners = {path.name: path.lstat().st_uid for path in (cache / "trees").iterdir()}
            mirror_owner = mirror.lstat().st_uid
            lock_owner = (cache / "lock").lstat().st_uid
        assert own["state"] == "success", own["error_message"]
        assert project["state"] == "success", project["error_message"]
        assert own["output"] == {"who": "the worker itself"}
        assert project["output"] == {"who": "the worker itself"}
        assert not marker.exists(), "a hook another user put in a mirror ran"
        assert kept == sorted([f"git-{commit}", f"project-site-{commit}"])
        assert set(owners.values()) == {os.geteuid()}
        assert mirror_owner == lock_owner == os.geteuid()
        assert lexists(base / "planted.yml")
        assert f"removing {mirror} from the source cache: {mirror} belongs to another user (uid {MALLORY})" in (
            caplog.text
        )
        assert "removing 3 run trees left by an earlier run" in caplog.text
        trees = cache / "trees"
        assert f"removing {trees / f'git-{commit}'} from the source cache: a directory of uid {MALLORY}" in caplog.text
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_a_second_worker_on_the_same_cache_is_refused(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    origin = Origin(tmp_path / "o")
    origin.commit("held")
    checkout = tmp_path / "playbooks"
    git(tmp_path, "clone", "--quiet", str(origin.bare), str(checkout))
    cache = tmp_path / "cache"
    go = tmp_path / "go"
    group = "g-shared-cache"
    settings = make_settings(broker.port, checkout, group, source_cache=cache)
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit({"task_id": "held", **JOB, "extra_vars": {"go_file": str(go)}})
        await wait_for_task(controller, "held", "Wait for the go-ahead")
        (tree,) = (cache / "trees").iterdir()
        config = worker_config(tmp_path / "second.json", broker, checkout, group, source_cache=str(cache))
        async with worker_process("run", "-c", str(config)) as second:
            code = await second.wait_exit()
        go.write_text("go")
        held = await controller.wait_terminal("held")
    assert code == 2, second.lines
    (problem,) = [line.strip() for line in second.lines if "worker.source_cache:" in line]
    assert problem == (
        f"worker.source_cache: {cache} is in use by another worker (process {os.getpid()}):"
        " each worker needs a source cache of its own"
    )
    assert held["state"] == "success", held["error_message"]
    assert held["output"] == {"before": "held", "after": "held"}
    # The second worker removed nothing of the first's, in use or not.
    assert sorted(path.name for path in (cache / "trees").iterdir()) == [tree.name]
