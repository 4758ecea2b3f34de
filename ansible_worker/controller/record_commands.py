"""The `logs` command, and a job's record at a terminal: its whole output, its events, runner artifacts."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.text import Text

from ansible_worker.controller.artifacts import write_artifacts
from ansible_worker.controller.client import Client, JobHandle
from ansible_worker.controller.parser import (
    EXIT_FAILED,
    EXIT_STOPPED_WATCHING,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    STATE_EXIT,
)
from ansible_worker.controller.terminal import CommandError, print_json_line, until_interrupted

# Ansible's colours for its own lines (its `COLOR_*` defaults), by how the line starts.
_LINE_COLOURS = (
    ("ok:", "green"),
    ("changed:", "yellow"),
    ("skipping:", "cyan"),
    ("included:", "cyan"),
    ("fatal:", "red"),
    ("failed:", "red"),
    ("FAILED - RETRYING", "dark_orange"),
    ("...ignoring", "cyan"),
    ("[WARNING]", "magenta"),
    ("[DEPRECATION WARNING]", "magenta"),
    ("[ERROR]", "red"),
    ("ERROR!", "red"),
)
_HEADINGS = ("PLAY ", "TASK ", "RUNNING HANDLER ", "PLAY RECAP", "PLAYBOOK:")


def print_output(console: Console, output: str) -> None:
    """Ansible's output as it showed it: plain when piped, in Ansible's colours on a terminal."""
    if not console.is_terminal:
        console.file.write(output if not output or output.endswith("\n") else output + "\n")
        console.file.flush()
        return
    for line in output.splitlines():
        console.print(Text(line, style=_colour(line)), soft_wrap=True, highlight=False, markup=False)


def _colour(line: str) -> str:
    stripped = line.lstrip()
    if stripped.startswith(_HEADINGS):
        return "bold"
    for prefix, colour in _LINE_COLOURS:
        if stripped.startswith(prefix):
            return colour
    return ""


def print_record(console: Console, record: dict[str, Any], *, events: bool) -> None:
    """A record's output (or, with `events`, its events as JSON lines), saying first when it was cut."""
    if events:
        for event in record["events"]:
            print_json_line(console, event)
        return
    if record.get("cut"):
        kept, total = len(record["events"]), record.get("events_total", "?")
        note = (
            f"[the record was cut to fit its limit: {kept} of {total} events and the last"
            f" {len(record['output'].encode())} of {record.get('output_bytes', '?')} bytes of output are kept]"
        )
        console.print(Text(note, style="dim"), soft_wrap=True)
    print_output(console, record["output"])


async def logs(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `logs` command: a finished job's record, or a running job's live lines until it ends.

    With `--artifact-dir`, the record is also written in ansible-runner's layout. Returns the
    exit code of the job's terminal state, as `watch` does, or `EXIT_STOPPED_WATCHING` when
    Ctrl-C stopped following a running job (which goes on).

    Errors: `CommandError` with `EXIT_UNAVAILABLE` when the broker holds neither a
    status nor a record of the job, a finished job left no record, or the job's worker went
    offline; with `EXIT_USAGE` when the artifacts cannot be written.

    Cancellation: every subscription is removed; nothing changes at the broker.
    """
    history = getattr(args, "history", None)
    if history is not None:
        # A finished job's record, from the store: the broker is not asked at all.
        stored = await history.record(args.task_id)
        if stored is not None:
            return finish_logs(console, args.task_id, stored, events=args.events, artifact_dir=args.artifact_dir)
    status = await client.status(args.task_id)
    if status is None or status.get("state") in STATE_EXIT:
        record = await client.record(args.task_id)
        if record is None:
            if status is None:
                raise CommandError(f"the broker holds no status and no record for {args.task_id}", EXIT_UNAVAILABLE)
            raise CommandError(
                f"{args.task_id} ended ({status.get('state')}) but the broker holds no record of it"
                " (worker.publish_records off, or it has expired)",
                EXIT_UNAVAILABLE,
            )
        return finish_logs(console, args.task_id, record, events=args.events, artifact_dir=args.artifact_dir)
    async with await client.follow(args.task_id) as handle:
        followed = await _follow_until_interrupted(handle, console, events=args.events)
    if isinstance(followed, CommandError):
        raise followed
    if followed is None:
        stopped = f"stopped following; {args.task_id} goes on (ansible-worker logs {args.task_id})"
        Console(stderr=True, highlight=False).print(stopped, markup=False)
        return EXIT_STOPPED_WATCHING
    final, printed = followed
    if printed and args.artifact_dir is None:
        return STATE_EXIT.get(str(final.get("state")), EXIT_FAILED)
    # It ended before a line arrived (between the two looks), or its artifacts are wanted: the record has it all.
    record = await client.record(args.task_id)
    if record is None:
        raise CommandError(f"{args.task_id} ended ({final.get('state')}) and left no record", EXIT_UNAVAILABLE)
    if not printed:
        print_record(console, record, events=args.events)
    if args.artifact_dir is not None:
        save_artifacts(console, args.artifact_dir, args.task_id, record)
    return STATE_EXIT.get(str(final.get("state")), EXIT_FAILED)


async def _follow_until_interrupted(
    handle: JobHandle, console: Console, *, events: bool
) -> tuple[dict[str, Any], int] | CommandError | None:
    """`print_live` until the job ends (its result, or its error), or None once Ctrl-C stops it, as in `watch`."""

    async def follow() -> tuple[dict[str, Any], int] | CommandError:
        try:
            return await print_live(handle, console, events=events)
        except CommandError as exc:
            return exc

    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        followed, interrupted = await until_interrupted(follow, interrupts)
    return None if interrupted else followed


def finish_logs(
    console: Console, task_id: str, record: dict[str, Any], *, events: bool, artifact_dir: Path | None
) -> int:
    """Print a finished job's record, write its artifacts if asked; the exit code of its state."""
    print_record(console, record, events=events)
    if artifact_dir is not None:
        save_artifacts(console, artifact_dir, task_id, record)
    return STATE_EXIT.get(str(record["status"].get("state")), EXIT_FAILED)


def save_artifacts(console: Console, directory: Path, task_id: str, record: dict[str, Any]) -> None:
    """Write the runner artifacts of job `task_id` and say where, on stderr. Errors: `CommandError`."""
    try:
        where = write_artifacts(directory, task_id, record)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot write the artifacts into {directory}: {exc}", EXIT_USAGE) from None
    Console(stderr=True, highlight=False).print(f"runner artifacts in {where}", style="dim", markup=False)


async def print_live(handle: JobHandle, console: Console, *, events: bool) -> tuple[dict[str, Any], int]:
    """Print a running job's live lines (or events as JSON lines) until its terminal status.

    Returns that status and how many lines were printed.

    Errors: `CommandError` with `EXIT_UNAVAILABLE` when the job's worker went offline.

    Cancellation: the handle stays open (its owner closes it); nothing changes at the broker.
    """
    printed = 0
    async for update in handle.updates():
        if update.kind == "lost":
            raise CommandError(f"the worker running {handle.task_id} went offline", EXIT_UNAVAILABLE)
        if update.kind == "event":
            if events:
                print_json_line(console, update.data)
                printed += 1
            elif isinstance(update.data.get("line"), str):
                print_output(console, update.data["line"])
                printed += 1
    final = handle.latest
    if final is None:
        raise CommandError("the connection to the broker was closed", EXIT_UNAVAILABLE)
    return final, printed
