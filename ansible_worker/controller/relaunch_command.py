"""`ansible-worker relaunch`: publish a finished job's request again, from its record; then as `submit`."""

from __future__ import annotations

import argparse
from datetime import datetime

from rich.console import Console

from ansible_worker.controller.client import Client
from ansible_worker.controller.job_commands import submit
from ansible_worker.controller.parser import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE
from ansible_worker.controller.relaunch import RelaunchError, failed_hosts, not_ours, relaunch_request, too_old
from ansible_worker.controller.terminal import CommandError


async def relaunch(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `relaunch` command: the request from the job's record under a new task_id (`--failed`: on the hosts
    that failed or were unreachable), then as `submit`.

    Cancellation: as `submit` once published; before, nothing has been sent.
    """
    record = await client.record(args.task_id)
    if record is None:
        raise CommandError(f"{args.task_id} left no record to relaunch it from", EXIT_UNAVAILABLE)
    original = record.get("request")
    if not isinstance(original, dict):
        raise CommandError(f"the record of {args.task_id} holds no request to publish again", EXIT_UNAVAILABLE)
    status = record.get("status") or {}
    refusal = not_ours(original, client) or too_old(original, client, heard=_time(status.get("created_at")))
    if refusal is not None:
        raise CommandError(f"{args.task_id}: {refusal}", EXIT_USAGE)
    try:
        hosts = failed_hosts(record) if args.failed else None
        args.job = relaunch_request(original, only_hosts=hosts)
    except RelaunchError as exc:
        raise CommandError(f"{args.task_id}: {exc}", EXIT_FAILED) from None
    if args.new_task_id:
        args.job["task_id"] = args.new_task_id
    if not args.json:
        where = f" on {', '.join(hosts)}" if hosts is not None else ""
        console.print(f"relaunching {args.task_id} as {args.job['task_id']}{where}", style="dim")
    return await submit(client, args, console)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
