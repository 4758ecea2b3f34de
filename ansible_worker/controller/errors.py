"""What the controller's client tells its caller in plain words when it cannot do what was asked."""

from __future__ import annotations

from ansible_worker.protocol.topics import Topics


class ClientError(Exception):
    """Something a controller should be told about in plain words."""


class NoWorkerAnswered(ClientError):
    """A submitted job got no `queued` status in time: no worker of the group is listening."""


class SigningKeyError(ClientError):
    """The signing key named by the settings or the command line cannot be used."""


class CatalogueUnreadable(ClientError):
    """The retained template catalogue is not one this client can read."""


class JobLost(ClientError):
    """The worker holding the job went offline (its will message) before the job ended."""


def no_worker_answered(topics: Topics, within: float, attempts: int, *, connected: bool) -> NoWorkerAnswered:
    """The error of a job that got no status within `within` seconds and `attempts` publishes, saying why."""
    group = topics.group
    if not connected:
        return NoWorkerAnswered(
            f"no worker of group {group!r} answered within {within:g}s: the connection to the broker"
            " was lost and has not come back, so the job may have reached nobody"
        )
    times = f"{attempts} attempt{'' if attempts == 1 else 's'}"
    return NoWorkerAnswered(
        f"no worker of group {group!r} answered within {within:g}s ({times}): none is connected to this"
        f" broker and subscribed to {topics.tasks}, so the job went to nobody"
    )
