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
    assert settings(tmp_path, worker="  lost_after: 70\n").lost_after == 70


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


def test_lost_after_with_which_a_freeze_could_be_reaped_unnoticed_is_refused_by_name(tmp_path: Path) -> None:
    # A worker notices its freeze after max(lost_after / 2, 2.5) s; the group may reap it
    # after a freeze of lost_after - heartbeat_interval.
    for heartbeat, lost_after, least in (("30", "40", "60"), ("1", "3", "3.5"), ("2", "3.9", "4.5")):
        with pytest.raises(ConfigError) as caught:
            settings(tmp_path, worker=f"  heartbeat_interval: {heartbeat}\n  lost_after: {lost_after}\n")
        assert caught.value.problems == [
            f"worker.lost_after: must be at least 2 x worker.heartbeat_interval and worker.heartbeat_interval + 2.5s"
            f" ({least}s here): a worker frozen for less than lost_after could be taken over without noticing it,"
            " and publish for jobs no longer its own"
        ]
    for heartbeat, lost_after in (("30", "60"), ("1", "3.5"), ("1", "4"), ("1", "6"), ("5", "20")):
        worker = f"  heartbeat_interval: {heartbeat}\n  lost_after: {lost_after}\n"
        assert settings(tmp_path, worker=worker).lost_after == float(lost_after)
    # The default always passes: 3 heartbeats plus a keepalive of at least 5 s.
    assert settings(tmp_path, worker="  heartbeat_interval: 0.1\n", mqtt="  keepalive: 5\n").lost_after == 5.3


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
