"""The cache of run trees: one build per key, nothing left by a failed build, eviction never under a running job."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.sources.run_trees import TreeCache


def filler(size: int, calls: list[str]) -> Callable[[Path], Awaitable[None]]:
    async def build(directory: Path) -> None:
        calls.append(directory.name)
        await trio.sleep(0.01)
        (directory / "data").write_bytes(b"x" * size)

    return build


async def test_one_build_per_key_shared_and_read_only(tmp_path: Path) -> None:
    cache = TreeCache(tmp_path / "trees", max_bytes=10**9, max_age=3600)
    calls: list[str] = []
    seen: list[Path] = []

    async def job() -> None:
        async with cache.lease("k", filler(10, calls)) as path:
            seen.append(path)
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(job)
    assert len(calls) == 1
    assert seen == [tmp_path / "trees" / "k"] * 3
    assert not os.access(tmp_path / "trees" / "k" / "data", os.W_OK) or os.geteuid() == 0
    assert (tmp_path / "trees" / "k" / "data").stat().st_mode & 0o222 == 0


async def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = TreeCache(tmp_path / "trees", max_bytes=10**9, max_age=3600)

    async def broken(directory: Path) -> None:
        (directory / "half").write_text("half")
        raise JobRefusedError("no")

    with pytest.raises(JobRefusedError):
        async with cache.lease("k", broken):
            pass
    assert list((tmp_path / "trees").iterdir()) == []


async def test_eviction_spares_trees_in_use(tmp_path: Path) -> None:
    cache = TreeCache(tmp_path / "trees", max_bytes=150, max_age=3600)
    calls: list[str] = []
    async with cache.lease("held", filler(100, calls)) as held:
        async with cache.lease("idle", filler(100, calls)):
            pass
        # Over the bound: the idle tree goes, the one a job holds stays.
        assert not (tmp_path / "trees" / "idle").exists()
        assert (held / "data").read_bytes() == b"x" * 100
    async with cache.lease("next", filler(100, calls)):
        pass
    assert sorted(path.name for path in (tmp_path / "trees").iterdir()) == ["next"]


async def test_a_cache_others_may_write_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "trees"
    root.mkdir()
    root.chmod(0o777)
    cache = TreeCache(root, max_bytes=10**9, max_age=3600)
    with pytest.raises(JobRefusedError, match="not private to the worker's user"):
        async with cache.lease("k", filler(1, [])):
            pass


async def test_nothing_an_earlier_run_left_is_trusted(tmp_path: Path) -> None:
    root = tmp_path / "trees"
    root.mkdir(mode=0o700)
    recent, half = root / "git-recent", root / ".building-git-x-1234"
    for directory in (recent, half):
        directory.mkdir()
        (directory / "f").write_text("f")
    # A tree's name leading anywhere: never used, and nothing is removed or changed through it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o555)
    (elsewhere / "site.yml").write_text("- hosts: all\n")
    (root / "git-linked").symlink_to(elsewhere)
    cache = TreeCache(root, max_bytes=10**9, max_age=86_400)
    calls: list[str] = []
    async with cache.lease("git-linked", filler(1, calls)) as path:
        assert not path.is_symlink()
        assert sorted(child.name for child in path.iterdir()) == ["data"]
    assert len(calls) == 1
    assert sorted(path.name for path in root.iterdir()) == ["git-linked"]
    assert sorted(child.name for child in elsewhere.iterdir()) == ["site.yml"]
    assert elsewhere.stat().st_mode & 0o777 == 0o555


async def test_a_link_put_in_place_of_a_tree_is_never_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = TreeCache(tmp_path / "trees", max_bytes=10**9, max_age=86_400)
    calls: list[str] = []
    async with cache.lease("sha256-a", filler(1, calls)):
        pass
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "site.yml").write_text("- hosts: all\n")
    key = "sha256-" + "d" * 64
    (tmp_path / "trees" / key).symlink_to(elsewhere)
    assert not cache.holds(key)
    async with cache.lease(key, filler(1, calls)) as path:
        assert not path.is_symlink()
        assert sorted(child.name for child in path.iterdir()) == ["data"]
    assert len(calls) == 2
    assert (elsewhere / "site.yml").exists()
    assert f"run tree {key} is not one this worker built (a symbolic link of the worker's user)" in caplog.text
