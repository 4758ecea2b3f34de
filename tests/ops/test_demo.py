"""The demo (`nox -s demo`) runs end to end and leaves `examples/` exactly as cloned."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.deployment import REPO, Deployment, lane
from tests.run.test_warm_equivalence import files_under

EXAMPLES = REPO / "examples"


def remove_new(root: Path, before: set[Path]) -> None:
    """Remove what appeared under `root` (deepest first), so that a failure leaves the checkout as it was."""
    for path in sorted(set(root.rglob("*")) - before, key=lambda path: len(path.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@pytest.fixture
def examples_alone() -> Iterator[None]:
    """`examples/` to this test alone: test processes running at once each wait for the others' demo."""
    descriptor = os.open(EXAMPLES, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


@lane
@pytest.mark.usefixtures("examples_alone")
async def test_the_demo_leaves_examples_as_cloned(deployment: Deployment) -> None:
    # The demo's own flow, from the checkout, as whoever runs it: root, or the image's user on
    # the system Python, for whom the checkout is read-only (root's cannot be made so safely:
    # a test killed before it undid that would leave the checkout so).
    command = [deployment.executable("python"), str(EXAMPLES / "demo.py")]
    paths = set(EXAMPLES.rglob("*"))
    before = files_under(EXAMPLES)
    try:
        with trio.fail_after(180):
            result = await deployment.run(command, cwd=REPO, env=deployment.environment())
        after = files_under(EXAMPLES)
    finally:
        remove_new(EXAMPLES, paths)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output[-4000:]
    assert "success" in output
    # No new entry, empty directories included (git would not show those).
    assert after == before
