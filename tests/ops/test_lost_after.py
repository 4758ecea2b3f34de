"""`worker.lost_after`: its default follows the heartbeat and the keepalive, and a value that cannot work is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_worker.ops.config import ConfigError, Settings, load_settings


def settings(tmp_path: Path, *, worker: str = "", mqtt: str = "") -> Settings:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mqtt:\n  host: 127.0.0.1\n{mqtt}worker:\n  group_name: g\n  playbook_directory: {tmp_path}\n{worker}"
    )
    return load_settings(config, environ={})


def test_lost_after_defaults_to_three_heartbeats_and_the_keepalive(tmp_path: Path) -> None:
    assert settings(tmp_path).lost_after == 3 * 30 + 60
    tuned = settings(tmp_path, worker="  heartbeat_interval: 5\n", mqtt="  keepalive: 10\n")
    assert tuned.lost_after == 25
    assert tuned.lost_after_warning() is None
    assert settings(tmp_path, worker="  lost_after: 40\n").lost_after == 40


def test_lost_after_no_longer_than_a_heartbeat_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, worker="  heartbeat_interval: 10\n  lost_after: 10\n")
    assert caught.value.problems == [
        "worker.lost_after: must be longer than worker.heartbeat_interval (10s): a worker would be judged lost"
        " between two of its heartbeats"
    ]
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, worker="  lost_after: -1\n")
    assert "worker.lost_after: Input should be greater than 0 (got -1)" in caught.value.problems


def test_lost_after_below_one_and_a_half_keepalives_is_warned_about(tmp_path: Path) -> None:
    risky = settings(tmp_path, worker="  heartbeat_interval: 5\n  lost_after: 20\n", mqtt="  keepalive: 60\n")
    warning = risky.lost_after_warning()
    assert warning is not None
    assert "below 1.5 x mqtt.keepalive (90s)" in warning


def test_validate_warns_about_a_risky_lost_after(tmp_path: Path) -> None:
    from ansible_worker.worker.summary import summarize

    risky = settings(tmp_path, worker="  heartbeat_interval: 5\n  lost_after: 20\n", mqtt="  keepalive: 60\n")
    assert "  warning: worker.lost_after (20s) is below 1.5 x mqtt.keepalive (90s)" in summarize(risky, None)
    assert "lost_after" not in summarize(settings(tmp_path), None)
