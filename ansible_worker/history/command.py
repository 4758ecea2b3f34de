"""The `ansible-worker archive` command: its flags, and running the archiver until a signal."""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ansible_worker.ops.config import ClientSettings

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
    sub.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help="the configuration file")
    sub.add_argument("--history", metavar="URL", help="the database (default: history.url)")


def run_archive(args: argparse.Namespace) -> int:
    """Run the archiver until SIGINT or SIGTERM; the exit code."""
    from ansible_worker.history.database import HistoryError
    from ansible_worker.ops.config import ClientSettings, ConfigError, load_settings
    from ansible_worker.ops.logging_setup import setup_logging

    try:
        settings = load_settings(args.config, model=ClientSettings)
    except ConfigError as exc:
        print("error: " + "\n  ".join(["the configuration cannot be used:", *exc.problems]), file=sys.stderr)
        return EXIT_USAGE
    url = args.history or settings.history.url
    if not url:
        print(
            "error: history.url is not set: e.g. sqlite:////var/lib/ansible-worker/history.db (or --history URL)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    setup_logging(settings_level(args))
    import trio

    try:
        trio.run(partial(_until_signal, settings, url))
    except HistoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


async def _until_signal(settings: ClientSettings, url: str) -> None:
    """Archive until SIGINT or SIGTERM; shutdown is cancellation."""
    import trio

    from ansible_worker.history.archiver import serve_archiver
    from ansible_worker.history.reader import open_history
    from ansible_worker.lone_errors import unwrap_lone_errors
    from ansible_worker.protocol.topics import Topics

    link = settings.mqtt.link_options(client_id=_client_id(settings))
    topics = Topics(settings.worker.topic_prefix, settings.worker.group_name)
    history_settings = settings.history
    with unwrap_lone_errors(), trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_history(url, migrate=True) as history, trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await nursery.start(
                partial(
                    serve_archiver,
                    history,
                    link,
                    topics,
                    keep_seconds=history_settings.keep_seconds,
                    purge_every=history_settings.purge_every,
                    purge_batch=history_settings.purge_batch,
                )
            )


def settings_level(args: argparse.Namespace) -> str:
    """The log level: INFO, or DEBUG with ANSIBLE_WORKER_LOG_LEVEL=DEBUG as for the worker."""
    import os

    level = os.environ.get("ANSIBLE_WORKER_LOG_LEVEL", "INFO").upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "INFO"


def _client_id(settings: ClientSettings) -> str:
    import secrets

    # Never the workers' client_id from a shared file: the broker would drop one of the two.
    return f"ansible-worker-archive-{settings.worker.group_name}-{secrets.token_hex(3)}"[:128]
