"""Fixtures the tests of workers share beyond the suite's own."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def stamps(tmp_path: Path) -> Path:
    """Where the stamp playbook writes each job's start and end."""
    directory = tmp_path / "stamps"
    directory.mkdir()
    return directory
