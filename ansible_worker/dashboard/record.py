"""Where the dashboard gets a finished job's record from: nowhere yet, until the group publishes records."""

from __future__ import annotations

from typing import Any

from ansible_worker.controller.client import Client


async def job_record(client: Client, task_id: str) -> dict[str, Any] | None:
    """The record of a finished job (its events and output), or None when the group has none.

    Cancellation: returns at once; a source that waits on the broker must bound that wait itself.
    """
    del client, task_id  # no record source in this version of the protocol
    return None
