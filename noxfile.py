"""Sessions for developers and CI: tests, lint, typecheck, benchmarks, the end-to-end demo, and the lock."""

from __future__ import annotations

import json
from pathlib import Path

import nox

# The exact version of every package a session installs (`nox -s lock` renews it); the
# lower bounds the project needs stay in pyproject.toml.
LOCK = "constraints.txt"
# The official JSON Schema of AsyncAPI 3.0, from the npm package the AsyncAPI project publishes.
ASYNCAPI_SPECS = ("@asyncapi/specs", "6.11.1")
# axe-core checks the dashboard's pages for accessibility inside the browser tests.
AXE_CORE = ("axe-core", "4.14.1")

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


def install(session: nox.Session, *requirements: str) -> None:
    """Install `requirements` at the versions of the lock."""
    session.install("-c", LOCK, *requirements)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against a real Mosquitto and real ansible-playbook (as root, also as the image's user)."""
    install(session, "-e", ".[dev]")
    venv = Path(session.virtualenv.location)
    schema = npm_package(session, venv / "asyncapi-specs", ASYNCAPI_SPECS) / "schemas" / "3.0.0.json"
    session.env["AXE_CORE_SCRIPT"] = str(npm_package(session, venv / "axe-core", AXE_CORE) / "axe.min.js")
    # The whole suite in three processes, on two cores: most of its time is spent waiting on
    # Ansible, the broker and the timers of the group's scenarios (measured: the CPU is idle
    # about two thirds of the time there). A subset, as given, in one.
    arguments = session.posargs or ["--numprocesses=3"]
    session.run("pytest", *arguments, env={"ASYNCAPI_SPEC_SCHEMA": str(schema)})


def npm_package(session: nox.Session, prefix: Path, package: tuple[str, str]) -> Path:
    """Install the npm `package` (name, exact version) under `prefix` unless it is there; its directory."""
    name, version = package
    directory = prefix / "node_modules" / name
    installed = directory / "package.json"
    if not installed.exists() or json.loads(installed.read_text()).get("version") != version:
        session.run(
            "npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", f"{name}@{version}", external=True
        )
    return directory


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    install(session, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy in strict mode over the package, the tests, the examples and this file."""
    install(session, "-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Measure the worker against running ansible-playbook directly; writes benchmarks/results.json."""
    # selenium drives the system Chromium for the dashboard's figures.
    install(session, ".", "selenium")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/bench_ssh.py")
    session.run("python", "benchmarks/bench_sources.py")
    session.run("python", "benchmarks/bench_warm.py", *session.posargs)
    session.run("python", "benchmarks/bench_dashboard.py")
    session.run("python", "benchmarks/bench_record.py")
    session.run("python", "benchmarks/bench_output.py", *session.posargs)
    session.run("python", "benchmarks/bench_locks.py", *session.posargs)
    session.run("python", "benchmarks/bench_history.py", *session.posargs)
    session.run("python", "benchmarks/bench_startup.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Three workers, 1,000 jobs, random restarts: counts lost and duplicated jobs (not in CI)."""
    install(session, ".")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Start a local broker and a worker, run the bundled example playbook, show its live status."""
    install(session, ".")
    session.run("python", "examples/demo.py")


@nox.session
def lock(session: nox.Session) -> None:
    """Renew constraints.txt on purpose: the newest versions pyproject.toml allows; then run the suite on them.

    The resolution reads PyPI only, and no pip or uv configuration of this machine (its own
    indexes, constraint files), for every platform and for Python 3.11 and newer.
    """
    install(session, "uv")
    session.run(
        "uv",
        "pip",
        "compile",
        "pyproject.toml",
        "--extra",
        "dev",
        "--universal",
        "--python-version",
        "3.11",
        "--upgrade",
        "--no-config",
        "--default-index",
        "https://pypi.org/simple",
        "--custom-compile-command",
        "nox -s lock",
        "--output-file",
        LOCK,
        env={"UV_INDEX": "", "UV_EXTRA_INDEX_URL": "", "UV_FIND_LINKS": "", "UV_CONSTRAINT": ""},
    )
    session.notify("tests")
    session.notify("lint")
    session.notify("typecheck")
