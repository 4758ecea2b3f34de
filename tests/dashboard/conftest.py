"""Fixtures of the dashboard's browser tests: a headless Chromium, and a worker process of the group."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import Broker, worker_config
from tests.dashboard.browser import chromium, process


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def worker(broker: Broker, playbook_dir: Path, group: str, tmp_path: Path) -> Iterator[str]:
    """A worker process of the group, one job at a time; its worker_id."""
    config = worker_config(tmp_path / "worker.json", broker, playbook_dir, group, worker_id="w1", heartbeat_interval=2)
    with process(["run", "-c", str(config)], tmp_path / "worker.log"):
        yield "w1"
