"""The template commands: `templates` lists the catalogue, `schedules` its runs, `launch` starts one with answers."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ansible_worker.controller import job_commands
from ansible_worker.controller.arguments import ArgumentError, parse_answers
from ansible_worker.controller.client import Client
from ansible_worker.controller.parser import EXIT_SUCCESS, EXIT_UNAVAILABLE, EXIT_USAGE
from ansible_worker.controller.terminal import CommandError, ask_line, print_json_line

if TYPE_CHECKING:
    from ansible_worker.protocol.group_messages import TemplateCatalogue, TemplateView
    from ansible_worker.protocol.survey import SurveyRule

# A person gets this many tries at each missing answer before the launch gives up.
TRIES = 3


async def templates(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `templates` command: each template of the group's catalogue, its survey and schedule."""
    catalogue = await _catalogue(client)
    if args.json:
        for name, view in sorted(catalogue.templates.items()):
            print_json_line(console, {"name": name, **view.model_dump(mode="json", exclude_none=True)})
        return EXIT_SUCCESS
    table = Table(box=None, header_style="bold")
    for column in ("TEMPLATE", "PLAYBOOK", "SURVEY", "SCHEDULE", "DESCRIPTION"):
        table.add_column(column)
    for name, view in sorted(catalogue.templates.items()):
        table.add_row(
            name,
            view.playbook,
            ", ".join(_variable(variable, rule) for variable, rule in view.survey.items()) or "-",
            f"{len(view.schedule)} entries" if len(view.schedule) != 1 else "1 entry",
            view.description or "",
        )
    console.print(table)
    if catalogue.templates_only:
        console.print("these workers run templates only (worker.templates_only)", style="dim")
    return EXIT_SUCCESS


async def schedules(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `schedules` command: each schedule entry's next runs, last run and missed ticks."""
    catalogue = await _catalogue(client)
    rows = [(name, entry) for name, view in sorted(catalogue.templates.items()) for entry in view.schedule]
    if args.json:
        for name, entry in rows:
            print_json_line(console, {"template": name, **entry.model_dump(mode="json", exclude_none=True)})
        return EXIT_SUCCESS
    if not rows:
        console.print("no template of the group has a schedule")
        return EXIT_SUCCESS
    table = Table(box=None, header_style="bold")
    for column in ("TEMPLATE", "WHEN", "NEXT RUNS", "LAST RUN", "MISSED"):
        table.add_column(column)
    for name, entry in rows:
        when = f"{entry.cron} ({entry.timezone})" if entry.cron else f"at {_time(entry.at)}"
        table.add_row(
            name,
            when,
            "\n".join(_time(moment) for moment in entry.next_runs[:3]) or "none",
            f"{_time(entry.last_run)} {entry.last_task_id or ''}".strip() if entry.last_run else "-",
            ", ".join(_time(moment) for moment in entry.missed[-3:]) or "-",
        )
    console.print(table)
    console.print(f"as of {_time(catalogue.published_at)}, from worker {catalogue.worker_id}", style="dim")
    return EXIT_SUCCESS


async def launch(client: Client, args: argparse.Namespace, console: Console) -> int:
    """The `launch` command: check the answers against the survey, ask for missing required ones, submit.

    On a terminal, each required variable without an answer or default is asked for (a
    secret without echo); elsewhere a missing one is an error. The job then goes as `submit`
    sends it, and `--wait` follows it.
    """
    catalogue = await _catalogue(client)
    view = catalogue.templates.get(args.template)
    if view is None:
        known = ", ".join(sorted(catalogue.templates)) or "none"
        raise CommandError(f"no template {args.template!r} in the group's catalogue (known: {known})", EXIT_USAGE)
    answers = await _answers(view, args, console)
    job: dict[str, Any] = {"template": args.template}
    if answers:
        job["extra_vars"] = answers
    if args.task_id:
        job["task_id"] = args.task_id
    args.job = job
    return await job_commands.submit(client, args, console)


async def _answers(view: TemplateView, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from ansible_worker.protocol.survey import SurveyError

    try:
        given, as_text = parse_answers(args.extra_vars or [])
    except ArgumentError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    answers: dict[str, Any] = {}
    for name, value in given.items():
        rule = view.survey.get(name)
        if rule is None:
            raise CommandError(f"-e {name}: not a survey variable of template {args.template!r}", EXIT_USAGE)
        try:
            answers[name] = rule.from_text(name, value) if name in as_text else rule.check(name, value)
        except SurveyError as exc:
            raise CommandError(f"-e {exc}", EXIT_USAGE) from None
    missing = [
        name
        for name, rule in view.survey.items()
        if rule.required and name not in answers and rule.default is None and not rule.has_default
    ]
    if missing and not sys.stdin.isatty():
        raise CommandError(f"missing required answers: {', '.join(missing)} (give each with -e NAME=VALUE)", EXIT_USAGE)
    for name in missing:
        answers[name] = await _ask(console, name, view.survey[name])
    return answers


async def _ask(console: Console, name: str, rule: SurveyRule) -> Any:
    from ansible_worker.protocol.survey import SurveyError

    hint = ", ".join(str(choice) for choice in rule.choices) if rule.choices else rule.type
    about = f" - {rule.description}" if rule.description else ""
    for _ in range(TRIES):
        line = await ask_line(console, f"{name} ({hint}){about}: ", secret=rule.type == "secret")
        if line is None:
            break
        try:
            return rule.from_text(name, line)
        except SurveyError as exc:
            console.print(f"  {exc}", style="red", markup=False)
    raise CommandError(f"no usable answer for {name}", EXIT_USAGE)


async def _catalogue(client: Client) -> TemplateCatalogue:
    catalogue = await client.catalogue()
    if catalogue is None:
        raise CommandError(
            f"no worker of group {client.topics.group!r} has published templates (worker.templates)", EXIT_UNAVAILABLE
        )
    return catalogue


def _variable(name: str, rule: SurveyRule) -> str:
    return f"{name}{'*' if rule.required else ''}:{rule.type}"


def _time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "?"
