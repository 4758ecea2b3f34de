"""The `ansible-worker` command line: parse it, then load only what the chosen command needs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ansible_worker import __version__
from ansible_worker.controller.parser import CONTROLLER_COMMANDS, add_controller_commands
from ansible_worker.dashboard.command import add_dashboard_command
from ansible_worker.history.command import add_archive_command
from ansible_worker.ops.config_source import DEFAULT_CONFIG_FILE, ENV_PREFIX

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
    """The parser of every command, the controller's included (their code is loaded later)."""
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
    add_archive_command(commands)
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
    """Print the AsyncAPI document, or write it and the JSON Schemas into `output_dir`."""
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
    """Run the command `argv` names (the worker by default) and return its exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        return keygen(args.name, args.directory)
    if args.command == "schema":
        return write_schema(args.output_dir)
    if args.command == "archive":
        from ansible_worker.history.command import run_archive

        return run_archive(args)
    if args.command == "dashboard":
        from ansible_worker.dashboard.command import run_dashboard

        return run_dashboard(args)
    if args.command in CONTROLLER_COMMANDS:
        # Imported only here, so that a worker process never loads the controller's (rich).
        from ansible_worker.controller.command_line import run_command

        return run_command(args)
    # Imported only here, so that a controller command never loads the worker tree.
    from ansible_worker.worker.main import run_worker

    return run_worker(args.config, validate=args.validate or args.command == "validate")
