"""The controller commands' arguments, help and exit codes, without loading what runs them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ansible_worker.protocol.topics import is_task_id

T = TypeVar("T", int, float)

CONTROLLER_COMMANDS = frozenset(
    {
        "submit",
        "adhoc",
        "relaunch",
        "watch",
        "status",
        "cancel",
        "forget",
        "workers",
        "logs",
        "jobs",
        "templates",
        "schedules",
        "launch",
    }
)

EXIT_SUCCESS = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CANCELLED = 4
EXIT_UNAVAILABLE = 5
EXIT_STOPPED_WATCHING = 130
# The exit code of each terminal state, for the commands that show how a job ended
# (`submit --wait`, `watch`, `logs`); the commands that look jobs up exit 0 when they can.
STATE_EXIT = {"success": EXIT_SUCCESS, "failed": EXIT_FAILED, "timeout": EXIT_TIMEOUT, "cancelled": EXIT_CANCELLED}

EXIT_CODES_HELP = """\
exit codes:
  0    submit/launch --wait, watch, logs: the job succeeded; submit, launch: a worker
       queued it; status, jobs, workers, cancel, forget, templates, schedules: done
  1    the job failed (submit, launch: a worker refused it)
  2    bad arguments or configuration; logs: --artifact-dir cannot be written;
       launch: a survey answer that is wrong, or missing where none can be asked
  3    the job timed out
  4    the job was cancelled
  5    no worker answered, the broker could not be reached, the job's worker went
       offline, no such job, or (logs) no usable record of it: none kept,
       unreadable, or naming another job; no template catalogue
  130  you stopped following a job with Ctrl-C; the job goes on
"""


_SUBMIT_HELP = """\
Publish a job for the workers of a group, like running ansible-playbook there.
The flags mirror ansible-playbook's. PLAYBOOK and INVENTORY are paths inside the
workers' playbook directory; an inventory with a comma is a host list (web1,web2,).

examples:
  ansible-worker submit site.yml -i inventories/prod -l web -e version=1.2 --wait
  ansible-worker submit ping.yml -i 'db1,db2,' --check --diff -vv --wait
  ansible-worker submit site.yml -i hosts.ini --broker mqtt://broker.example --json
"""


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type: a number of `kind` greater than 0."""

    def convert(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
        return value

    return convert


def _task_id(text: str) -> str:
    """An argparse type: a task_id, which names the job's topics and so may hold no wildcard."""
    if not is_task_id(text):
        raise argparse.ArgumentTypeError(f"not a task_id: {text[:140]!r} (1 to 128 of A-Z, a-z, 0-9, '.', '_', '-')")
    return text


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add the broker flags (`-c`, `--broker`, `--group`, `--prefix`, `--signing-key`) to `parser`."""
    group = parser.add_argument_group("broker")
    group.add_argument("-c", "--config", type=Path, help="read the broker and group from this file (as the workers do)")
    group.add_argument("--broker", metavar="URL", help="mqtt://[user[:password]@]host[:port] or mqtts://...")
    group.add_argument("--group", help="the workers' group_name (default: from the config, else 'default')")
    group.add_argument("--prefix", help="the workers' topic_prefix (default: from the config, else 'ansible')")
    group.add_argument(
        "--signing-key",
        type=Path,
        metavar="FILE",
        help="sign jobs and cancel requests with this Ed25519 private key (default: security.signing_key)",
    )
    group.add_argument(
        "--history",
        metavar="URL",
        help="read finished jobs from this history store: sqlite:///PATH or postgresql://… (default: history.url)",
    )


def add_delivery_options(parser: argparse.ArgumentParser) -> None:
    """The flags of `submit` and `launch` that say how a job is sent and followed."""
    parser.add_argument("--task-id", type=_task_id, help="name the job (default: a new unique id)")
    parser.add_argument("-w", "--wait", action="store_true", help="follow the job live until it ends")
    parser.add_argument("--json", action="store_true", help="print JSON lines for scripts instead of text")
    parser.add_argument(
        "--artifact-dir",
        type=Path,
        metavar="DIR",
        help="with --wait, write the finished job as ansible-runner's artifacts into DIR/<task_id>/",
    )
    parser.add_argument(
        "--answer-within",
        type=float,
        metavar="SECONDS",
        help="give up if no worker answers within this long (default 10)",
    )
    parser.add_argument(
        "--retry-after",
        type=_positive(float),
        metavar="SECONDS",
        help="publish the same job again when no worker answered within this long (default 5)",
    )
    parser.add_argument(
        "--attempts",
        type=_positive(int),
        metavar="N",
        help="publish the job at most N times in all (default: as often as --answer-within allows; 1: never again)",
    )


def add_controller_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add submit, watch, status, cancel, forget and workers to the command line."""

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_connection_options(sub)
        return sub

    submit = command("submit", "publish a job (like ansible-playbook, on a worker)", _SUBMIT_HELP)
    submit.add_argument("playbook", metavar="PLAYBOOK", help="playbook path, relative to the playbook directory")
    submit.add_argument("-i", "--inventory", required=True, help="inventory path, or a host list with a comma")
    submit.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        metavar="VARS",
        help="KEY=VALUE pairs, @FILE (YAML or JSON), or a JSON object; repeatable, later wins",
    )
    submit.add_argument("-l", "--limit", help="limit to these hosts or groups")
    submit.add_argument("-t", "--tags", action="append", help="only tasks with these tags (comma-separated)")
    submit.add_argument("--skip-tags", action="append", help="skip tasks with these tags (comma-separated)")
    submit.add_argument("-C", "--check", action="store_true", help="check mode: change nothing")
    submit.add_argument("-D", "--diff", action="store_true", help="show the differences of changed files")
    submit.add_argument("-v", "--verbose", action="count", default=0, help="more Ansible output (up to -vvvv)")
    submit.add_argument("-f", "--forks", type=int, help="parallel processes (default 5)")
    submit.add_argument("--timeout", type=float, metavar="SECONDS", help="end the job after this long")
    submit.add_argument("--git-pull", action="store_true", help="git pull the playbook directory first")
    submit.add_argument(
        "--credential",
        action="append",
        dest="credentials",
        metavar="NAME",
        help="run with the worker's credential NAME (an SSH key, a vault password, variables); repeatable",
    )
    source = submit.add_argument_group("where the playbooks come from (default: the workers' playbook directory)")
    source.add_argument("--project", metavar="NAME", help="a project of the workers' worker.projects")
    source.add_argument("--revision", metavar="REV", help="a commit, tag or branch of the project to run")
    source.add_argument(
        "--ship", type=Path, metavar="DIR", help="send this directory (without .git) with the job and run from it"
    )
    source.add_argument(
        "--ship-retention",
        type=_positive(int),
        metavar="SECONDS",
        help="how long the broker keeps shipped content for later jobs (default 86400)",
    )
    add_delivery_options(submit)

    add_adhoc_command(command)
    relaunch = command(
        "relaunch",
        "publish a finished job again, on every host or on those that failed",
        "Publish a job's request again under a new task_id, from the job's record.\n"
        "--failed limits it to the hosts that failed or were unreachable.\n\n"
        "examples:\n"
        "  ansible-worker relaunch deploy-42 --failed --wait",
    )
    relaunch.add_argument("task_id", metavar="TASK_ID", type=_task_id)
    relaunch.add_argument("--failed", action="store_true", help="only the hosts that failed or were unreachable")
    relaunch.add_argument("--task-id", dest="new_task_id", type=_task_id, help="name the new job (default: a new id)")
    relaunch.add_argument("-w", "--wait", action="store_true", help="follow the new job live until it ends")
    relaunch.add_argument("--json", action="store_true", help="print JSON lines for scripts instead of text")
    relaunch.add_argument("--answer-within", type=float, metavar="SECONDS", help="as submit's (default 10)")
    relaunch.set_defaults(retry_after=None, attempts=None)

    watch = command(
        "watch",
        "follow a job live, from wherever it is now",
        "Follow a job live: Ansible's output lines, the task now running, counts and elapsed time.\n"
        "Ctrl-C asks whether to cancel the job or just stop watching.",
    )
    watch.add_argument("task_id", metavar="TASK_ID", type=_task_id)
    watch.add_argument("--json", action="store_true", help="one JSON object per status or event, for scripts")

    status = command("status", "show a job's current status", "Show the status the broker holds for a job.")
    status.add_argument("task_id", metavar="TASK_ID", type=_task_id)
    status.add_argument("--json", action="store_true", help="print the status as one JSON line")

    cancel = command(
        "cancel",
        "cancel a queued or running job",
        "Cancel a job: a queued one leaves the queue, a running one has its processes ended.\n"
        "Waits until the worker confirms.",
    )
    cancel.add_argument("task_id", metavar="TASK_ID", type=_task_id)
    cancel.add_argument("--reason", help="why; shown in the job's final status")
    cancel.add_argument(
        "--wait-seconds", type=float, default=60, metavar="SECONDS", help="how long to wait for the worker to confirm"
    )

    forget = command(
        "forget", "clear a finished job's status", "Remove a finished job's retained status from the broker."
    )
    forget.add_argument("task_id", metavar="TASK_ID", type=_task_id)

    workers = command(
        "workers", "list the group's workers", "List the workers of the group: state, capacity, load, last heartbeat."
    )
    workers.add_argument("--json", action="store_true", help="print one JSON object per worker and line")
    add_record_commands(command)
    add_template_commands(command)


def add_template_commands(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Add templates, schedules and launch, which read the group's retained template catalogue."""
    templates = command(
        "templates",
        "list the group's job templates",
        "List the job templates the group's workers publish: playbook, survey (* marks a required\n"
        "answer), schedule and description.",
    )
    templates.add_argument("--json", action="store_true", help="print one JSON object per template and line")
    schedules = command(
        "schedules",
        "list the templates' schedules: next and last runs",
        "List each schedule entry of the group's templates: when it runs, its next runs, the last\n"
        "tick the group ran, and ticks missed while no worker was online.",
    )
    schedules.add_argument("--json", action="store_true", help="print one JSON object per entry and line")
    launch = command(
        "launch",
        "launch a job template with survey answers",
        "Launch one of the group's templates. Answers are checked against its survey first; on a\n"
        "terminal, each required answer not given is asked for (a secret without echo).\n\n"
        "examples:\n"
        "  ansible-worker launch deploy -e version=1.2.0 -e replicas=3 --wait\n"
        "  ansible-worker launch deploy -e @answers.yml --json",
    )
    launch.add_argument("template", metavar="NAME", help="the template's name (see `ansible-worker templates`)")
    launch.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        metavar="ANSWERS",
        help="survey answers: NAME=VALUE (read by the variable's type), @FILE or a JSON object; repeatable",
    )
    add_delivery_options(launch)


_ADHOC_HELP = """\
Publish an ad-hoc command for the workers of a group, like running `ansible` there.
The module must be in the workers' worker.ad_hoc_modules. ARGS is Ansible's
key=value or free-form text, or a JSON object whose strings reach the module as data.

examples:
  ansible-worker adhoc all -m ping -i inventories/prod --wait
  ansible-worker adhoc web -m ansible.builtin.service -a 'name=nginx state=restarted' -i hosts.ini --wait
  ansible-worker adhoc db1 -m shell -a 'sleep 600' -B 3600 -P 0 -i hosts.ini
"""


def add_adhoc_command(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Add adhoc, the ad-hoc command's counterpart of submit."""
    adhoc = command("adhoc", "publish an ad-hoc command (like ansible, on a worker)", _ADHOC_HELP)
    adhoc.add_argument("hosts", metavar="HOSTS", help="the host pattern (all, web, 'db1:db2')")
    adhoc.add_argument("-m", "--module-name", dest="module", required=True, help="the module to run")
    adhoc.add_argument("-a", "--args", dest="module_args", metavar="ARGS", help="the module's arguments")
    adhoc.add_argument("-i", "--inventory", required=True, help="inventory path, or a host list with a comma")
    adhoc.add_argument("-e", "--extra-vars", action="append", metavar="VARS", help="as submit's -e; repeatable")
    adhoc.add_argument("-l", "--limit", help="further limit to these hosts or groups")
    adhoc.add_argument("-B", "--background", type=_positive(int), metavar="SECONDS", help="run asynchronously")
    adhoc.add_argument("-P", "--poll", type=int, metavar="SECONDS", help="with -B, poll this often; 0: do not wait")
    adhoc.add_argument("-C", "--check", action="store_true", help="check mode: change nothing")
    adhoc.add_argument("-D", "--diff", action="store_true", help="show the differences of changed files")
    adhoc.add_argument("-v", "--verbose", action="count", default=0, help="more Ansible output (up to -vvvv)")
    adhoc.add_argument("-f", "--forks", type=int, help="parallel processes (default 5)")
    adhoc.add_argument("--timeout", type=float, metavar="SECONDS", help="end the job after this long")
    adhoc.add_argument("--credential", action="append", dest="credentials", metavar="NAME", help="as submit's")
    adhoc.add_argument("--task-id", type=_task_id, help="name the job (default: a new unique id)")
    adhoc.add_argument("-w", "--wait", action="store_true", help="follow the job live until it ends")
    adhoc.add_argument("--json", action="store_true", help="print JSON lines for scripts instead of text")
    adhoc.add_argument("--answer-within", type=float, metavar="SECONDS", help="as submit's (default 10)")
    adhoc.add_argument("--retry-after", type=_positive(float), metavar="SECONDS", help="as submit's (default 5)")
    adhoc.add_argument("--attempts", type=_positive(int), metavar="N", help="as submit's")


def add_record_commands(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Add logs and jobs, which read the jobs' retained records and statuses."""
    logs = command(
        "logs",
        "print a job's whole output, finished or running",
        "Print what Ansible printed for a job: from its record once it has ended, live while it runs.\n"
        "Coloured on a terminal, plain when piped.\n\n"
        "examples:\n"
        "  ansible-worker logs deploy-42\n"
        "  ansible-worker logs deploy-42 --events | jq 'select(.status == \"failed\")'\n"
        "  ansible-worker logs deploy-42 --artifact-dir artifacts/",
    )
    logs.add_argument("task_id", metavar="TASK_ID", type=_task_id)
    logs.add_argument("--events", action="store_true", help="print the job's events as JSON lines instead")
    logs.add_argument(
        "--artifact-dir",
        type=Path,
        metavar="DIR",
        help="also write the job as ansible-runner's artifacts into DIR/<task_id>/",
    )
    jobs = command(
        "jobs",
        "list the group's jobs",
        "List the group's jobs, newest first: id, state, playbook, worker, start, duration and\n"
        "counts. From the history store when one is set (history.url, --history), else from\n"
        "the broker's retained statuses.\n\n"
        "examples:\n"
        "  ansible-worker jobs --state failed --since 1d\n"
        "  ansible-worker jobs --host web3 --since 7d\n"
        "  ansible-worker jobs --playbook 'deploy/*' --json",
    )
    jobs.add_argument("--state", help="only jobs in this state (or these, comma-separated)")
    jobs.add_argument("--playbook", help="only jobs of this playbook (a shell pattern like 'deploy/*' works)")
    jobs.add_argument("--since", metavar="WHEN", help="only jobs since then: an age (30m, 2h, 7d) or an ISO 8601 time")
    jobs.add_argument("--until", metavar="WHEN", help="only jobs before then: an age or an ISO 8601 time")
    jobs.add_argument("--worker", help="only jobs of this worker id")
    jobs.add_argument("--host", help="only jobs that ran on this inventory host (needs a history store)")
    jobs.add_argument(
        "--limit", type=_positive(int), default=1000, help="print at most this many jobs, the newest (default: 1000)"
    )
    jobs.add_argument("--json", action="store_true", help="print one JSON object per job and line")
