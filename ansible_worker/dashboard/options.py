"""The dashboard's settings: its flags over the config file's `dashboard` section over the defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ansible_worker.controller.parser import EXIT_USAGE
from ansible_worker.controller.terminal import CommandError
from ansible_worker.ops.config import (
    ClientSecuritySettings,
    ClientSettings,
    ConfigError,
    DashboardSettings,
    load_settings,
)


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    """Where the page listens, its token, whether it may act, and how fresh a request it signs again must have been."""

    listen: str
    token: str | None
    allow_actions: bool
    max_task_age: float = 300
    max_clock_skew: float = 60


def dashboard_options(args: argparse.Namespace) -> DashboardOptions:
    """The effective options. Errors: `CommandError` naming the config key that is wrong."""
    section = DashboardSettings()
    security = ClientSecuritySettings()
    if args.config is not None or not args.broker:
        try:
            settings = load_settings(args.config, model=ClientSettings)
            section, security = settings.dashboard, settings.security
        except ConfigError as exc:
            if args.config is not None or any(problem.startswith("dashboard") for problem in exc.problems):
                problems = "\n  ".join(exc.problems)
                raise CommandError(f"configuration error:\n  {problems}", EXIT_USAGE) from None
            # Without a file, resolve_target reports the missing broker settings.
    token = args.token if args.token is not None else (section.token.get_secret_value() if section.token else None)
    return DashboardOptions(
        listen=args.listen or section.listen,
        token=token or None,
        allow_actions=section.allow_actions if args.allow_actions is None else args.allow_actions,
        max_task_age=security.max_task_age,
        max_clock_skew=security.max_clock_skew,
    )
