"""The `ansible-worker` command line: run the worker, validate its config, print its version."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import trio

from ansible_worker import __version__
from ansible_worker.controller.parser import CONTROLLER_COMMANDS, add_controller_commands
from ansible_worker.dashboard.command import add_dashboard_command
from ansible_worker.ops.config import DEFAULT_CONFIG_FILE, ENV_PREFIX, ConfigError, Settings, load_settings
from ansible_worker.ops.logging_setup import setup_logging
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.command import Executable, child_environment, find_ansible_playbook, find_executable
from ansible_worker.run.special_vars import describe_allowed
from ansible_worker.worker.service import Worker

log = logging.getLogger("ansible_worker")

EXIT_CONFIG = 2

_DESCRIPTION = """\
Run Ansible playbooks on request from an MQTT broker and publish their status live.

Without a command, `ansible-worker` runs the worker. Settings come from a YAML file
(default: ./config.yaml, `${VAR}` references expanded) and from environment variables
that override it, e.g. ANSIBLE_WORKER_MQTT__HOST=broker.example.

The other commands are for controllers: they talk to the workers through the broker.
"""


def build_parser() -> argparse.ArgumentParser:
    config_help = f"configuration file (default: {DEFAULT_CONFIG_FILE}; without it, {ENV_PREFIX}* variables only)"
    parser = argparse.ArgumentParser(
        prog="ansible-worker", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-c", "--config", type=Path, help=config_help)
    parser.add_argument("--validate", action="store_true", help="check the configuration, print a summary, and exit")
    parser.add_argument("--version", action="version", version=f"ansible-worker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run the worker (the default)", description="Run the worker until SIGINT or SIGTERM."
    )
    validate = commands.add_parser(
        "validate",
        help="check the configuration and exit",
        description="Check the configuration; exit 0 with a summary, or 2 with one line per problem.",
    )
    for sub in (run, validate):
        # SUPPRESS keeps `ansible-worker -c X run` from being reset by the subcommand's default.
        sub.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    add_controller_commands(commands)
    add_dashboard_command(commands)
    keygen = commands.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing jobs",
        description=(
            "Write NAME.key (the private key, mode 0600) and NAME.pub (the public key). Never overwrites.\n"
            "A controller's key signs jobs (its security.signing_key; workers list NAME.pub under\n"
            "security.trusted_keys). A worker's key signs its claims (its security.worker_key; other\n"
            "workers list NAME.pub under security.worker_keys). Use a separate pair for each role."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keygen.add_argument("name", metavar="NAME", help="file name stem, e.g. the controller's name")
    keygen.add_argument("-d", "--directory", type=Path, default=Path(), help="where to write the files (default: here)")
    schema = commands.add_parser(
        "schema",
        help="print or write the MQTT API's description (AsyncAPI 3, JSON Schemas)",
        description=(
            "Print the AsyncAPI 3 document of the MQTT API, or with --output-dir write it as\n"
            "asyncapi.yaml beside schemas/*.json, one JSON Schema per message."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    schema.add_argument("-o", "--output-dir", type=Path, help="write the files here (e.g. docs)")
    return parser


def write_schema(output_dir: Path | None) -> int:
    from ansible_worker.ops.api_schema import asyncapi_document, write_documents

    if output_dir is None:
        import yaml

        print(yaml.safe_dump(asyncapi_document(), sort_keys=False, width=100), end="")
        return 0
    for path in write_documents(output_dir):
        print(f"wrote {path}")
    return 0


def keygen(name: str, directory: Path) -> int:
    """Write a key pair and say how to use it; exit 2 if it cannot be written."""
    from ansible_worker.protocol.signing import generate_key_pair

    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    try:
        fingerprint = generate_key_pair(private, public)
    except OSError as exc:
        print(f"error: {exc.filename or private}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {private} (private: keep it secret) and {public} (public)")
    print(f"fingerprint {fingerprint}")
    print("\nas a controller's key, the controller config:\n  security:\n    signing_key: " + str(private))
    print(
        "and the workers' config:\n  security:\n    require_signed_tasks: true\n"
        f"    trusted_keys:\n      {name}: {public}\n    worker_key: (a key pair of its own, made the same way)"
    )
    print(
        f"\nas a worker's key, the worker config:\n  security:\n    worker_key: {private}\n"
        f"and other workers' config (when they have keys of their own):\n  security:\n    worker_keys:\n"
        f"      {name}: {public}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        return keygen(args.name, args.directory)
    if args.command == "schema":
        return write_schema(args.output_dir)
    if args.command == "dashboard":
        from ansible_worker.dashboard.command import run_dashboard

        return run_dashboard(args)
    if args.command in CONTROLLER_COMMANDS:
        # Imported only here, so that a worker process never loads the controller's (rich).
        from ansible_worker.controller.commands import run_command

        return run_command(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print("configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.validate or args.command == "validate":
        print(summarize(settings, args.config))
        return 0
    setup_logging(settings.log_level, log_format=settings.log_format, worker_id=settings.worker.worker_id)
    # The worker's job runner says which ansible-playbook it found; git is only needed for git_pull.
    git = executables(settings)[1]
    if git.path is None:
        log.warning("worker.git_path: %s; jobs with git_pull will fail", git.describe())
    trio.run(_serve, settings)
    return 0


async def _serve(settings: Settings) -> None:
    worker = Worker(settings)
    async with trio.open_nursery() as nursery:
        # The signal receiver stays open for the whole run, so a second signal is seen
        # too instead of killing the process with a traceback.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(_watch_signals, signals, worker)
            await worker.run()
            nursery.cancel_scope.cancel()


async def _watch_signals(signals: AsyncIterator[int], worker: Worker) -> None:
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.info("received %s: shutting down (send it again to stop waiting for running jobs)", name)
            worker.request_shutdown()
        else:
            log.info("received %s again: cancelling running jobs now", name)
            worker.request_shutdown(hurry=True)


def _names(environment: Mapping[str, object]) -> str:
    if not environment:
        return "nothing added for Ansible"
    return f"{', '.join(sorted(environment))} for Ansible (values hidden)"


def _http(settings: Settings) -> str:
    http = settings.worker.http
    if http.port is None:
        return "off (set worker.http.port for /healthz, /readyz and /metrics)"
    return f"http://{http.host}:{http.port}/healthz, /readyz, /metrics"


def _signatures(settings: Settings) -> str:
    security = settings.security
    if not security.require_signed_tasks:
        return "not required (anyone who may publish on the tasks topic can run a job)"
    keys = ", ".join(sorted(security.trusted_keys))
    signing = security.claim_signing
    claims = ""
    if signing is not None:
        claims = f"; claims signed by worker_key {signing[0].fingerprint}, trusted: {', '.join(signing[1].names)}"
    return f"required, trusted keys: {keys}; max age {security.max_task_age:g}s{claims}"


def executables(settings: Settings) -> tuple[Executable, Executable]:
    """The ansible-playbook and git that jobs would run, found as the job runner finds them."""
    worker = settings.worker
    environment = child_environment(
        os.environ, extra={name: value.get_secret_value() for name, value in worker.environment.items()}
    )
    git = find_executable(worker.git_path, search_path=environment.get("PATH", os.defpath))
    return find_ansible_playbook(worker.ansible_playbook_path, environment), git


def summarize(settings: Settings, path: Path | None) -> str:
    """A one-screen view of the effective configuration, secrets masked."""
    mqtt, worker = settings.mqtt, settings.worker
    topics = Topics(worker.topic_prefix, worker.group_name)
    source = (
        str(path)
        if path is not None
        else (str(DEFAULT_CONFIG_FILE) if DEFAULT_CONFIG_FILE.exists() else "environment only")
    )
    ansible_playbook, git = executables(settings)
    password = "(set, hidden)" if mqtt.password is not None else "(none)"
    tls = "off"
    if mqtt.tls_enabled:
        tls = f"on (CA {mqtt.tls_ca_cert or 'system store'}" + (
            f", client cert {mqtt.tls_client_cert})" if mqtt.tls_client_cert else ")"
        )
    lines = [
        f"configuration OK ({source})",
        "",
        f"  broker        {mqtt.host}:{mqtt.port}  tls {tls}",
        f"  credentials   user {mqtt.username or '(none)'}  password {password}",
        f"  client id     {mqtt.client_id or 'ansible-worker-' + worker.worker_id}  keepalive {mqtt.keepalive}s",
        f"  worker        {worker.worker_id} in group {worker.group_name}",
        f"  playbooks     {worker.playbook_directory}",
        f"  capacity      {worker.concurrency} at once, queue of {worker.max_queue_size}",
        f"  timeouts      job {worker.task_timeout:g}s, git {worker.git_timeout:g}s, kill grace {worker.kill_grace:g}s",
        f"  executables   {ansible_playbook.describe()}",
        f"                {git.describe()}",
        f"  messages      up to {worker.max_message_bytes} bytes; status every {worker.status_interval:g}s at most",
        f"  log level     {settings.log_level}",
        f"  environment   {_names(worker.environment)}",
        f"  extra_vars    {describe_allowed(worker.allowed_special_vars)}",
        f"  signatures    {_signatures(settings)}",
        f"  http          {_http(settings)}",
        "",
        f"  jobs from     {topics.tasks_subscription(shared=worker.shared_subscription)}",
        f"  status on     {topics.status('<task_id>')} (retained)",
    ]
    if ansible_playbook.path is None:
        lines.append(f"  problem: worker.ansible_playbook_path: {ansible_playbook.describe()}: every job will fail")
    if git.path is None:
        lines.append(f"  warning: worker.git_path: {git.describe()}: jobs with git_pull will fail")
    if worker.state_dir is not None:
        from ansible_worker.worker.journal import exposure

        problem = exposure(worker.state_dir)
        if problem is not None:
            lines.append(f"  warning: worker.state_dir: {problem}")
    return "\n".join(lines)
