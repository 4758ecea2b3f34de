"""The `ansible-worker dashboard` command: its flags, and running the web page beside a broker client."""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from typing import TYPE_CHECKING

import trio

from ansible_worker.controller.parser import EXIT_UNAVAILABLE, EXIT_USAGE, add_connection_options

if TYPE_CHECKING:
    from ansible_worker.controller.target import Target
    from ansible_worker.dashboard.access import Listen
    from ansible_worker.dashboard.options import DashboardOptions

_DESCRIPTION = """\
Serve a web page showing the group's workers and jobs live, with each job's output.
With --allow-actions, the page can cancel a job and run a finished one again.
Listening beyond loopback requires a token, which the page asks for once.

examples:
  ansible-worker dashboard -c config.yaml
  ansible-worker dashboard --broker mqtt://broker.example --group web --allow-actions
  ansible-worker dashboard -c config.yaml --listen 0.0.0.0:8470 --token "$DASHBOARD_TOKEN"
"""


def add_dashboard_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dashboard` to the command line."""
    sub = commands.add_parser(
        "dashboard",
        help="serve a live web page of the group's workers and jobs",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(sub)
    web = sub.add_argument_group("web page")
    web.add_argument(
        "--listen", metavar="HOST:PORT", help="where the page listens (default: dashboard.listen, 127.0.0.1:8470)"
    )
    web.add_argument("--token", help="the token the page asks for (default: dashboard.token); required beyond loopback")
    web.add_argument(
        "--allow-actions",
        action="store_true",
        default=None,
        help="let the page cancel jobs and run them again (default: dashboard.allow_actions, off)",
    )


def run_dashboard(args: argparse.Namespace) -> int:
    """Run the dashboard until interrupted; the exit code."""
    from ansible_worker.controller.command_line import resolve_target
    from ansible_worker.controller.errors import ClientError
    from ansible_worker.controller.terminal import CommandError
    from ansible_worker.dashboard.access import AccessError, check_listen, parse_listen
    from ansible_worker.dashboard.options import dashboard_options

    try:
        options = dashboard_options(args)
        listen = parse_listen(options.listen)
        check_listen(listen, options.token)
        target = resolve_target(args)
    except (AccessError, CommandError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, CommandError) else EXIT_USAGE
    try:
        trio.run(partial(_until_signal, target, listen, options))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OSError as exc:
        print(f"error: cannot listen on {listen.host}:{listen.port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


async def _until_signal(target: Target, listen: Listen, options: DashboardOptions) -> None:
    """Run `serve` until SIGINT or SIGTERM; shutdown is cancellation.

    Cancellation: the signal watcher and the server share one nursery, cancelled together.
    """
    from ansible_worker.dashboard.serve import serve
    from ansible_worker.lone_errors import unwrap_lone_errors

    with unwrap_lone_errors(), trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await serve(
                target,
                listen,
                token=options.token,
                allow_actions=options.allow_actions,
                max_task_age=options.max_task_age,
                max_clock_skew=options.max_clock_skew,
            )
            nursery.cancel_scope.cancel()
