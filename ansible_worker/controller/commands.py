"""The controller's commands: submit, watch, status, cancel, forget and workers, for people and scripts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from rich.console import Console
from rich.markup import escape

from ansible_worker.controller.arguments import ArgumentError, parse_extra_vars, split_list
from ansible_worker.controller.client import (
    ANSWER_WITHIN,
    RETRY_AFTER,
    Client,
    ClientError,
    JobHandle,
    SigningKeyError,
    Target,
    load_signer,
    lost_message,
    open_client,
    target_from_settings,
    target_from_url,
)
from ansible_worker.controller.parser import (
    EXIT_FAILED,
    EXIT_STOPPED_WATCHING,
    EXIT_SUCCESS,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    STATE_EXIT,
)
from ansible_worker.controller.record_commands import (
    RecordCommandError,
    jobs,
    logs,
    print_record,
    save_artifacts,
)
from ansible_worker.controller.shipping import DEFAULT_CONTENT_RETENTION, ProgressBar, ShipError
from ansible_worker.controller.view import JobView, summary, workers_table
from ansible_worker.protocol.signing import SignatureRefused

T = TypeVar("T")

PROMPT_SECONDS = 60.0


class CommandError(Exception):
    """Ends a command with a message for the person and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def resolve_target(args: argparse.Namespace) -> Target:
    """The broker and group from --broker, else from the config file and environment.

    The signing key is `--signing-key`, else the config's `security.signing_key`.
    """
    try:
        target = _broker_target(args)
        if args.signing_key is not None:
            target = dataclasses.replace(target, signer=load_signer(args.signing_key))
    except SigningKeyError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    return target


def _broker_target(args: argparse.Namespace) -> Target:
    if args.broker:
        return target_from_url(args.broker, group=args.group or "default", prefix=args.prefix or "ansible")
    # Only here: with --broker, no settings (nor pydantic-settings) are loaded at all.
    from ansible_worker.ops.config import ClientSettings, ConfigError, load_settings

    try:
        settings = load_settings(args.config, model=ClientSettings)
    except ConfigError as exc:
        problems = "\n  ".join(exc.problems)
        raise CommandError(
            f"no usable broker settings (give --broker URL or -c FILE):\n  {problems}", EXIT_USAGE
        ) from None
    target = target_from_settings(settings)
    if args.group or args.prefix:
        topics = type(target.topics)(args.prefix or target.topics.prefix, args.group or target.topics.group)
        target = dataclasses.replace(target, topics=topics)
    return target


def build_job(args: argparse.Namespace) -> dict[str, Any]:
    """The job request of `submit`'s flags; only the flags given appear in it.

    Errors: `ArgumentError` for `--extra-vars` that cannot be read.
    """
    job: dict[str, Any] = {"playbook": args.playbook, "inventory": args.inventory}
    if args.task_id:
        job["task_id"] = args.task_id
    extra_vars = parse_extra_vars(args.extra_vars or [])
    if extra_vars:
        job["extra_vars"] = extra_vars
    optional = {
        "limit": args.limit,
        "tags": split_list(args.tags) or None,
        "skip_tags": split_list(args.skip_tags) or None,
        "verbosity": args.verbose or None,
        "check_mode": args.check or None,
        "diff_mode": args.diff or None,
        "forks": args.forks,
        "timeout": args.timeout,
        "git_pull": args.git_pull or None,
        "credentials": args.credentials or None,
        "project": getattr(args, "project", None),
        "revision": getattr(args, "revision", None),
    }
    job.update({key: value for key, value in optional.items() if value is not None})
    return job


def run_command(args: argparse.Namespace) -> int:
    """Run one controller command to completion and return its exit code."""
    console = Console(stderr=False, highlight=False)
    errors = Console(stderr=True, highlight=False)
    _show_client_warnings()
    try:
        if args.command == "submit":
            # Bad flags are reported before anything touches the network.
            args.job = build_job(args)
        target = resolve_target(args)
        command = _COMMANDS[args.command]
        return trio.run(_with_client, target, command, args, console)
    except (CommandError, ArgumentError, ClientError, ShipError) as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        if isinstance(exc, CommandError | RecordCommandError):
            return exc.code
        return EXIT_USAGE if isinstance(exc, ArgumentError | ShipError) else EXIT_UNAVAILABLE


Command = Callable[[Client, argparse.Namespace, Console], Awaitable[int]]


class _PlainLines(logging.StreamHandler):  # type: ignore[type-arg]
    """Log records as their bare message on stderr."""


def _show_client_warnings() -> None:
    """The client's warnings (a job published again, a reconnect) as plain lines on stderr."""
    logger = logging.getLogger("ansible_worker.controller.client")
    if not any(isinstance(handler, _PlainLines) for handler in logger.handlers):
        handler = _PlainLines(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def print_json_line(console: Console, value: object) -> None:
    """One compact JSON object on one line of stdout, for scripts: `--json` prints only these.

    Written past rich, which would wrap long lines and turn `:smile:` in Ansible's text into emoji.
    """
    try:
        line = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        # NaN or Infinity from an event: strict JSON has no such numbers, so they become null.
        line = json.dumps(_finite(value), separators=(",", ":"))
    console.file.write(line + "\n")
    console.file.flush()


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def note(console: Console, text: str, *, as_json: bool) -> None:
    """A remark for the person; with `--json` it goes to stderr, so stdout stays JSON lines."""
    if as_json:
        print(text, file=sys.stderr, flush=True)
    else:
        console.print(text, style="dim")


async def _with_client(target: Target, command: Command, args: argparse.Namespace, console: Console) -> int:
    async with open_client(target) as client:
        return await command(client, args, console)


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


async def until_interrupted(work: Callable[[], Awaitable[T]], interrupts: AsyncIterator[int]) -> tuple[T | None, bool]:
    """Run `work` until it returns or Ctrl-C arrives; say which happened.

    `work` should not raise: an error of its own would leave this wrapped in an exception group.
    """
    result: T | None = None
    interrupted = False
    async with trio.open_nursery() as nursery:

        async def run_work() -> None:
            nonlocal result
            result = await work()
            nursery.cancel_scope.cancel()

        async def wait_for_interrupt() -> None:
            nonlocal interrupted
            async for _ in interrupts:
                interrupted = True
                nursery.cancel_scope.cancel()
                return

        nursery.start_soon(run_work)
        nursery.start_soon(wait_for_interrupt)
    return result, interrupted


async def ask_yes_no(console: Console, question: str, interrupts: AsyncIterator[int]) -> bool:
    """Ask on the terminal; no answer within a minute, or another Ctrl-C, means no.

    Cancellation: the duplicate of stdin is closed and stdin made blocking again; the
    question stays unanswered on the terminal.
    """
    console.print(question, end="", markup=False)
    fd = os.dup(sys.stdin.fileno())
    stream = trio.lowlevel.FdStream(fd)
    try:
        answer, interrupted = await until_interrupted(lambda: _read_line(stream), interrupts)
    finally:
        await stream.aclose()
        # FdStream made the shared terminal non-blocking; give the shell back a blocking one.
        os.set_blocking(sys.stdin.fileno(), True)
    if interrupted:
        console.print()
    return (answer or "").strip().lower() in ("y", "yes")


async def _read_line(stream: trio.lowlevel.FdStream) -> str:
    data = b""
    with trio.move_on_after(PROMPT_SECONDS):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(1024)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


async def status(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `status` command: print the job's retained status.

    Errors: `CommandError` with `EXIT_UNAVAILABLE` when the broker holds none.

    Cancellation: as `Client.status`; nothing changes at the broker.
    """
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


_COMMANDS: dict[str, Command] = {
    "submit": submit,
    "watch": watch,
    "status": status,
    "cancel": cancel,
    "forget": forget,
    "workers": workers,
    "logs": logs,
    "jobs": jobs,
}

__all__ = ["run_command"]
