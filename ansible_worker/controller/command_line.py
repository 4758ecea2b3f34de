"""Run one controller command from its parsed arguments: find the broker, open a client, turn errors into exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Awaitable, Callable

import trio
from rich.console import Console
from rich.markup import escape

from ansible_worker.controller import job_commands, record_commands, relaunch_command, template_commands
from ansible_worker.controller.arguments import ArgumentError, build_adhoc_job, build_job
from ansible_worker.controller.client import Client, ClientError, SigningKeyError, Target, open_client
from ansible_worker.controller.parser import EXIT_UNAVAILABLE, EXIT_USAGE
from ansible_worker.controller.shipping import ShipError
from ansible_worker.controller.target import load_signer, target_from_settings, target_from_url
from ansible_worker.controller.terminal import CommandError

Command = Callable[[Client, argparse.Namespace, Console], Awaitable[int]]


def resolve_target(args: argparse.Namespace) -> Target:
    """The broker and group from --broker, else from the config file and environment.

    The signing key is `--signing-key`, else the config's `security.signing_key`.
    """
    try:
        target = _broker_target(args)
        if args.signing_key is not None:
            target = dataclasses.replace(target, signer=load_signer(args.signing_key))
        if getattr(args, "history", None):
            target = dataclasses.replace(target, history=args.history)
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


def run_command(args: argparse.Namespace) -> int:
    """Run one controller command to completion and return its exit code."""
    console = Console(stderr=False, highlight=False)
    errors = Console(stderr=True, highlight=False)
    _show_client_warnings()
    try:
        if args.command == "submit":
            # Bad flags are reported before anything touches the network.
            args.job = build_job(args)
        elif args.command == "adhoc":
            args.job = build_adhoc_job(args)
        target = resolve_target(args)
        command = _COMMANDS[args.command]
        return trio.run(_with_client, target, command, args, console)
    except (CommandError, ArgumentError, ClientError, ShipError) as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        if isinstance(exc, CommandError):
            return exc.code
        return EXIT_USAGE if isinstance(exc, ArgumentError | ShipError) else EXIT_UNAVAILABLE


class _PlainLines(logging.StreamHandler):  # type: ignore[type-arg]
    """Log records as their bare message on stderr."""


def _show_client_warnings() -> None:
    """The client's warnings (a job published again) and its session's (a lost link) as plain lines on stderr."""
    for name in ("ansible_worker.controller.client", "ansible_worker.mqtt.session"):
        logger = logging.getLogger(name)
        if not any(isinstance(handler, _PlainLines) for handler in logger.handlers):
            handler = _PlainLines(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)


async def _with_client(target: Target, command: Command, args: argparse.Namespace, console: Console) -> int:
    if target.history is None:
        args.history = None
        async with open_client(target) as client:
            return await command(client, args, console)
    # Only with a store: a command that talks to the broker alone never loads SQLAlchemy.
    from ansible_worker.history.reader import HistoryError, open_history

    try:
        async with open_history(target.history) as history, open_client(target) as client:
            args.history = history
            return await command(client, args, console)
    except HistoryError as exc:
        raise CommandError(str(exc), EXIT_UNAVAILABLE) from None


_COMMANDS: dict[str, Command] = {
    "submit": job_commands.submit,
    "adhoc": job_commands.submit,
    "relaunch": relaunch_command.relaunch,
    "watch": job_commands.watch,
    "status": job_commands.status,
    "cancel": job_commands.cancel,
    "forget": job_commands.forget,
    "workers": job_commands.workers,
    "logs": record_commands.logs,
    "jobs": job_commands.jobs,
    "templates": template_commands.templates,
    "schedules": template_commands.schedules,
    "launch": template_commands.launch,
}

__all__ = ["run_command"]
