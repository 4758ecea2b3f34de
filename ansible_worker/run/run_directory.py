"""A run's private directory: where its event FIFO, extra_vars and vault files live while it runs, and its name."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Every run directory's name starts so: a restarted worker knows the ones a crash left.
RUN_DIRECTORY_PREFIX = "ansible-worker-"
EVENT_FIFO_NAME = "events.fifo"


@contextmanager
def private_run_directory(parent: Path | None, task_id: str) -> Iterator[Path]:
    """A fresh directory (mode 0700) for one run, removed with everything in it afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"{RUN_DIRECTORY_PREFIX}{task_id[:40]}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
