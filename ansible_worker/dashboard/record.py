"""Where the dashboard gets a finished job's record from: the retained record the job's worker published."""

from __future__ import annotations

from typing import Any

from ansible_worker.controller.client import Client, ClientError


async def job_record(client: Client, task_id: str) -> dict[str, Any] | None:
    """The record of a finished job (final status, events, Ansible's output), or None when there is none.

    A record that cannot be read counts as none (the client has logged why).

    Cancellation: the record subscription is removed; the caller bounds the wait.
    """
    try:
        return await client.record(task_id)
    except ClientError:
        return None
