"""The `ansible-worker archive` command: its flags, and running the archiver until a signal."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ansible_worker.mqtt.options import LinkOptions, link_from_url
from ansible_worker.protocol.topics import Topics, is_task_id

EXIT_USAGE = 2
# As the controller commands: 2 a usage or config mistake, 5 a service that cannot be reached.
EXIT_UNAVAILABLE = 5

_DESCRIPTION = """\
Keep the group's job history in a database: every status, record and worker presence the
broker carries is written to history.url (SQLite: sqlite:///PATH, or PostgreSQL:
postgresql://USER:PASSWORD@HOST/DATABASE). Several archivers may write to one PostgreSQL.
The schema is created, or migrated forward, on start. With history.keep (e.g. 90d), older
jobs are removed in the background.

examples:
  ansible-worker archive -c config.yaml
  ansible-worker archive -c config.yaml --history sqlite:////var/lib/ansible-worker/history.db
  ansible-worker archive --broker mqtt://broker.example --group web --history sqlite:///history.db --keep 90d
"""


def add_archive_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `archive` to the command line."""
    sub = commands.add_parser(
        "archive",
        help="write the group's job history to a database",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # SUPPRESS keeps `ansible-worker -c X archive` from being reset by the subcommand's default.
    sub.add_argument(
        "-c", "--config", type=Path, default=argparse.SUPPRESS, help="read the broker, group and history from this file"
    )
    sub.add_argument(
        "--broker", metavar="URL", help="mqtt://[user[:password]@]host[:port] or mqtts://... (then no file is read)"
    )
    sub.add_argument("--group", help="the workers' group_name (default: from the config, else 'default')")
    sub.add_argument("--prefix", help="the workers' topic_prefix (default: from the config, else 'ansible')")
    sub.add_argument("--history", metavar="URL", help="the database (default: history.url)")
    sub.add_argument("--keep", metavar="DURATION", help="remove jobs older than this, e.g. 90d (default: history.keep)")


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    """What one archiver needs: its broker, its group, its store, and how long the store keeps jobs."""

    link: LinkOptions
    topics: Topics
    url: str
    keep_seconds: int | None
    purge_every: float = 600
    purge_batch: int = 1000


def archive_options(args: argparse.Namespace) -> ArchiveOptions:
    """The archiver's options from its flags, and from the config file unless `--broker` is given.

    Errors: `ArchiveUsageError` naming the flag or key at fault.
    """
    from ansible_worker.ops.config import ClientSettings, ConfigError, duration_seconds, load_settings

    keep_seconds: int | None = None
    if args.keep is not None:
        try:
            keep_seconds = duration_seconds(args.keep)
        except ValueError as exc:
            raise ArchiveUsageError(f"--keep {args.keep!r}: {exc}") from None
        if keep_seconds <= 0:
            raise ArchiveUsageError(f"--keep {args.keep!r}: must be longer than 0")
    if args.broker:
        # As the other commands: with --broker, no file is read, so its flags say everything.
        if not args.history:
            raise ArchiveUsageError("--broker needs --history URL: e.g. sqlite:////var/lib/ansible-worker/history.db")
        group, prefix = args.group or "default", args.prefix or "ansible"
        try:
            link = link_from_url(args.broker, client_id=_client_id(group))
        except ValueError as exc:
            raise ArchiveUsageError(str(exc)) from None
        return ArchiveOptions(link, _topics(prefix, group), args.history, keep_seconds)
    try:
        settings = load_settings(getattr(args, "config", None), model=ClientSettings)
    except ConfigError as exc:
        raise ArchiveUsageError("\n  ".join(["the configuration cannot be used:", *exc.problems])) from None
    url = args.history or settings.history.url
    if not url:
        raise ArchiveUsageError(
            "history.url is not set: e.g. sqlite:////var/lib/ansible-worker/history.db (or --history URL)"
        )
    group = args.group or settings.worker.group_name
    return ArchiveOptions(
        settings.mqtt.link_options(client_id=_client_id(group)),
        _topics(args.prefix or settings.worker.topic_prefix, group),
        url,
        keep_seconds if args.keep is not None else settings.history.keep_seconds,
        settings.history.purge_every,
        settings.history.purge_batch,
    )


class ArchiveUsageError(Exception):
    """The archiver's flags or configuration cannot be used; the text says why."""


def _topics(prefix: str, group: str) -> Topics:
    """The group's topics; the flags are checked as the config file's keys are. Errors: `ArchiveUsageError`."""
    from ansible_worker.ops.config import check_topic_prefix

    # A wildcard in either would subscribe to other groups' topics.
    if not is_task_id(group):
        raise ArchiveUsageError(f"--group {group[:140]!r}: 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-'")
    try:
        check_topic_prefix(prefix)
    except ValueError as exc:
        raise ArchiveUsageError(f"--prefix {prefix[:140]!r}: {exc}") from None
    return Topics(prefix, group)


def run_archive(args: argparse.Namespace) -> int:
    """Run the archiver until SIGINT or SIGTERM; the exit code."""
    from ansible_worker.history.database import HistoryError
    from ansible_worker.ops.logging_setup import setup_logging

    try:
        options = archive_options(args)
    except ArchiveUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings_level(args))
    import trio

    try:
        trio.run(partial(_until_signal, options))
    except HistoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


async def _until_signal(options: ArchiveOptions) -> None:
    """Archive until SIGINT or SIGTERM; shutdown is cancellation."""
    import trio

    from ansible_worker.history.archiver import serve_archiver
    from ansible_worker.history.reader import open_history
    from ansible_worker.lone_errors import unwrap_lone_errors

    with unwrap_lone_errors(), trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_history(options.url, migrate=True) as history, trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await nursery.start(
                partial(
                    serve_archiver,
                    history,
                    options.link,
                    options.topics,
                    keep_seconds=options.keep_seconds,
                    purge_every=options.purge_every,
                    purge_batch=options.purge_batch,
                )
            )


def settings_level(args: argparse.Namespace) -> str:
    """The log level: INFO, or DEBUG with ANSIBLE_WORKER_LOG_LEVEL=DEBUG as for the worker."""
    import os

    level = os.environ.get("ANSIBLE_WORKER_LOG_LEVEL", "INFO").upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "INFO"


def _client_id(group: str) -> str:
    import secrets

    # Never the workers' client_id from a shared file: the broker would drop one of the two.
    return f"ansible-worker-archive-{group}-{secrets.token_hex(3)}"[:128]
