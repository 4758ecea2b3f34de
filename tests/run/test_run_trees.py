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


async def test_trees_an_earlier_run_left_are_bounded_too(tmp_path: Path) -> None:
    root = tmp_path / "trees"
    root.mkdir(mode=0o700)
    old, recent, half = root / "git-old", root / "git-recent", root / ".building-git-x-1234"
    for directory in (old, recent, half):
        directory.mkdir()
        (directory / "f").write_text("f")
    # Made two days ago; the age bound is one day.
    two_days_ago = os.stat(old).st_mtime - 2 * 86_400
    os.utime(old, (two_days_ago, two_days_ago))
    cache = TreeCache(root, max_bytes=10**9, max_age=86_400)
    async with cache.lease("git-new", filler(1, [])):
        pass
    assert sorted(path.name for path in root.iterdir()) == ["git-new", "git-recent"]
