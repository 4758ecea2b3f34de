"""The job commands: submit, watch, status, cancel, forget, jobs and workers, for people and scripts."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from ansible_worker.controller.client import ANSWER_WITHIN, RETRY_AFTER, Client, JobHandle, lost_message
from ansible_worker.controller.job_filter import parse_since, parse_states
from ansible_worker.controller.job_listing import newest_jobs
from ansible_worker.controller.parser import (
    EXIT_FAILED,
    EXIT_STOPPED_WATCHING,
    EXIT_SUCCESS,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    STATE_EXIT,
)
from ansible_worker.controller.record_commands import print_record, save_artifacts
from ansible_worker.controller.shipping import DEFAULT_CONTENT_RETENTION
from ansible_worker.controller.terminal import (
    CommandError,
    ProgressBar,
    ask_yes_no,
    note,
    print_json_line,
    until_interrupted,
)
from ansible_worker.controller.view import JobView, job_row, jobs_table, summary, workers_table
from ansible_worker.protocol.signing import SignatureRefused

PIPED_WIDTH = 250


async def submit(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `submit` command: publish the job, then print who queued it, or with `--wait` follow it to its end.

    Cancellation: as `Client.submit` while it waits for an answer (the job, once published, is
    not withdrawn); after that, the handle is closed and the job goes on without a watcher.
    """
    answer_within = ANSWER_WITHIN if args.answer_within is None else args.answer_within
    retry_after = RETRY_AFTER if args.retry_after is None else args.retry_after
    ship_dir: Path | None = getattr(args, "ship", None)
    bar = ProgressBar(sys.stderr)
    try:
        handle = await client.submit(
            args.job,
            answer_within=answer_within,
            retry_after=retry_after,
            attempts=args.attempts,
            ship=ship_dir,
            ship_retention=getattr(args, "ship_retention", None) or DEFAULT_CONTENT_RETENTION,
            ship_progress=bar,
        )
    except SignatureRefused as exc:
        # Raised before anything is published: a value of the job that no signature can cover.
        raise CommandError(f"cannot sign the job: {exc}", EXIT_USAGE) from None
    if handle.shipment is not None:
        shipment = handle.shipment
        how = "sent" if shipment.sent else "already on the broker, not sent again"
        bar.finish(f"shipped {shipment.files} entries, {shipment.size / 1e6:.1f} MB, sha256 {shipment.sha256}: {how}")
    async with handle:
        first = handle.latest or {}
        if not args.wait:
            if args.json:
                print_json_line(console, first)
            else:
                console.print(f"{handle.task_id} {first.get('state')} by worker {first.get('worker_id')}")
                console.print(f"follow it with: ansible-worker watch {handle.task_id}", style="dim")
            return EXIT_FAILED if first.get("state") == "failed" else EXIT_SUCCESS
        code = await follow(handle, console, as_json=args.json)
    artifact_dir = getattr(args, "artifact_dir", None)
    if artifact_dir is not None and code in STATE_EXIT.values():
        record = await client.record(handle.task_id)
        if record is None:
            raise CommandError(f"{handle.task_id} left no record to write artifacts from", EXIT_UNAVAILABLE)
        save_artifacts(console, artifact_dir, handle.task_id, record)
    return code


async def watch(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `watch` command: follow a job, whatever its state, until it ends or Ctrl-C.

    Cancellation: as `Client.follow` while the handle opens; after that, the handle is closed
    and the job goes on. Nothing is sent to the workers.
    """
    async with await client.follow(args.task_id) as handle:
        await client.barrier()
        handle.take_arrived()
        if handle.latest is None:
            note(console, f"no status yet for {args.task_id}; waiting for one (Ctrl-C to stop)", as_json=args.json)
        elif handle.latest.get("state") in STATE_EXIT and not args.json:
            # A finished job: what Ansible printed, from its record, before the summary.
            record = await client.record(args.task_id)
            if record is not None:
                print_record(console, record, events=False)
        return await follow(handle, console, as_json=args.json)


async def follow(handle: JobHandle, console: Console, *, as_json: bool) -> int:
    """Show a job until it ends. Ctrl-C asks whether to cancel it or just stop watching.

    Returns the exit code of the job's terminal state, or `EXIT_STOPPED_WATCHING`.
    Errors: `CommandError` with `EXIT_UNAVAILABLE` when the job's worker went offline.

    Cancellation: the Ctrl-C handler is removed and the live view stopped; the handle stays
    open (its owner closes it) and the job goes on, unless a cancel request was already sent.
    """
    interactive = sys.stdin.isatty() and not as_json
    lost: dict[str, Any] | None = None

    async def show() -> dict[str, Any] | None:
        nonlocal lost
        async for update in handle.updates():
            if update.kind == "lost":
                lost = update.data
                return None
            if as_json:
                # The terminal status comes last, once, after the loop.
                if not (update.kind == "status" and update.data.get("state") in STATE_EXIT):
                    print_json_line(console, {"type": update.kind, "data": update.data})
            else:
                view.show(update)
        return handle.latest

    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        view = JobView(console, handle.task_id, live=not as_json)
        with view:
            final, interrupted = await until_interrupted(show, interrupts)
        if interrupted and interactive:
            console.print()
            if await ask_yes_no(console, f"Cancel job {handle.task_id} too? [y/N] ", interrupts):
                await handle.cancel(reason="interrupted at the terminal")
                console.print("cancel requested; waiting for the job to end", style="dim")
                with view:
                    final, interrupted = await until_interrupted(show, interrupts)
        if lost is not None:
            raise CommandError(lost_message(handle.task_id, lost), EXIT_UNAVAILABLE)
        if interrupted or final is None:
            stopped = f"stopped watching; {handle.task_id} goes on (ansible-worker watch {handle.task_id})"
            if as_json:
                note(console, stopped, as_json=True)
            else:
                console.print(stopped)
            return EXIT_STOPPED_WATCHING
    if as_json:
        print_json_line(console, {"type": "status", "data": final})
    else:
        console.print()
        console.print(summary(final))
    return STATE_EXIT.get(str(final.get("state")), EXIT_FAILED)


async def status(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `status` command: print the job's retained status.

    Errors: `CommandError` with `EXIT_UNAVAILABLE` when the broker holds none.

    Cancellation: as `Client.status`; nothing changes at the broker.
    """
    current = None
    history = getattr(args, "history", None)
    if history is not None:
        # A finished job's status is final: the store answers without asking the broker.
        stored = await history.status(args.task_id)
        if stored is not None and stored.get("state") in STATE_EXIT:
            current = stored
    if current is None:
        current = await client.status(args.task_id)
    if current is None:
        raise CommandError(f"the broker holds no status for {args.task_id}", EXIT_UNAVAILABLE)
    if args.json:
        print_json_line(console, current)
    else:
        console.print(summary(current))
    return EXIT_SUCCESS


async def cancel(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `cancel` command: ask for a queued or running job to be cancelled; wait `--wait-seconds` for its end.

    Errors: `CommandError` with `EXIT_UNAVAILABLE` when the broker holds no status of the job,
    or the job has not ended in time.

    Cancellation: before the request is published, nothing was asked; after, the request
    stands and the job may still be cancelled. The handle is closed, unless the cancellation
    came while `Client.follow` opened it (see there).
    """
    current = await client.status(args.task_id)
    if current is None:
        raise CommandError(f"the broker holds no status for {args.task_id}: no worker has it", EXIT_UNAVAILABLE)
    if current.get("state") not in ("queued", "running"):
        console.print(f"{args.task_id} already ended: {current.get('state')}")
        return EXIT_SUCCESS
    async with await client.follow(args.task_id) as handle:
        await handle.cancel(reason=args.reason)
        console.print(
            f"cancel requested for {args.task_id}; waiting for worker {current.get('worker_id')}", style="dim"
        )
        with trio.move_on_after(args.wait_seconds) as bound:
            final = await handle.wait()
    if bound.cancelled_caught:
        raise CommandError(f"{args.task_id} has not ended within {args.wait_seconds:g}s", EXIT_UNAVAILABLE)
    console.print(summary(final))
    return EXIT_SUCCESS


async def forget(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `forget` command: clear the retained status of a job that is not queued or running.

    Errors: `CommandError` with `EXIT_USAGE` while the job is queued or running.

    Cancellation: as `Client.forget`: the status may or may not be cleared; safe to retry.
    """
    current = await client.status(args.task_id)
    if current is not None and current.get("state") in ("queued", "running"):
        raise CommandError(f"{args.task_id} is still {current.get('state')}: cancel it first", EXIT_USAGE)
    await client.forget(args.task_id)
    console.print(f"forgot {args.task_id}" if current is not None else f"nothing to forget for {args.task_id}")
    return EXIT_SUCCESS


async def workers(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `workers` command: print the group's workers from their retained presence messages.

    Cancellation: as `Client.workers`; nothing is left behind.
    """
    found = await client.workers()
    if args.json:
        # One line per worker: JSON lines like every other --json, not one array.
        for worker in found:
            print_json_line(console, worker)
    elif not found:
        console.print(f"no worker of group {client.topics.group!r} has ever announced itself on this broker")
    else:
        console.print(workers_table(found))
    return EXIT_SUCCESS


async def jobs(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `jobs` command: the group's jobs, newest first, from the history store if there is one, else the broker.

    Errors: `CommandError` with `EXIT_USAGE` for a bad `--state`, `--since` or `--until`, or
    `--host` without a store.

    Cancellation: every subscription is released; nothing is left behind.
    """
    try:
        states = parse_states(args.state)
        since = parse_since(args.since) if args.since else None
        until = parse_since(args.until) if getattr(args, "until", None) else None
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    limit: int = getattr(args, "limit", None) or 1000
    history = getattr(args, "history", None)
    if history is not None:
        from ansible_worker.history.store import JobQuery

        query = JobQuery(
            states=states,
            playbook=args.playbook,
            worker=getattr(args, "worker", None),
            host=getattr(args, "host", None),
            since=since.timestamp() if since else None,
            until=until.timestamp() if until else None,
        )
        found, more = await history.newest(query, limit)
        partial = f"showing the newest {len(found)}; --limit for more" if more else None
    else:
        if getattr(args, "host", None):
            raise CommandError("--host needs a history store: set history.url (or --history URL)", EXIT_USAGE)
        listing = await newest_jobs(
            client,
            limit=limit,
            state=args.state,
            playbook=args.playbook,
            since=since,
            until=until,
            worker=getattr(args, "worker", None),
        )
        found = listing.statuses
        partial = None
        if listing.partial is not None:
            partial = (
                f"showing the newest {len(found)} of at least {max(listing.matched, len(found))}"
                f" ({listing.partial}); configure history.url for more"
            )
    if args.json:
        for status in found:
            print_json_line(console, job_row(status))
    elif not found:
        console.print(f"no jobs of group {client.topics.group!r} match", style="dim")
    else:
        # Piped, the table is not squeezed to 80 columns: one job per line, whatever reads it.
        wide = console if console.is_terminal else Console(file=console.file, width=PIPED_WIDTH, highlight=False)
        wide.print(jobs_table(found))
    if partial is not None:
        Console(stderr=True, highlight=False).print(partial, markup=False, soft_wrap=True)
    return EXIT_SUCCESS
