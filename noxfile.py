"""Sessions for developers and CI: tests, lint, typecheck, benchmarks, and the end-to-end demo."""

from __future__ import annotations

from pathlib import Path

import nox

# The official JSON Schema of AsyncAPI 3.0, from the npm package the AsyncAPI project publishes.
ASYNCAPI_SPECS = "@asyncapi/specs@6"
# axe-core checks the dashboard's pages for accessibility inside the browser tests.
AXE_CORE = "axe-core@4.14.1"

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against a real Mosquitto and real ansible-playbook."""
    session.install("-e", ".[dev]")
    specs = Path(session.virtualenv.location) / "asyncapi-specs"
    schema = specs / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
    if not schema.exists():
        session.run("npm", "install", "--prefix", str(specs), "--no-audit", "--no-fund", ASYNCAPI_SPECS, external=True)
    axe_prefix = Path(session.virtualenv.location) / AXE_CORE
    axe = axe_prefix / "node_modules" / "axe-core" / "axe.min.js"
    if not axe.exists():
        session.run("npm", "install", "--prefix", str(axe_prefix), "--no-audit", "--no-fund", AXE_CORE, external=True)
    session.env["AXE_CORE_SCRIPT"] = str(axe)
    session.run("pytest", *session.posargs, env={"ASYNCAPI_SPEC_SCHEMA": str(schema)})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy in strict mode over the package, the tests, the examples and this file."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Measure the worker against running ansible-playbook directly; writes benchmarks/results.json."""
    # selenium drives the system Chromium for the dashboard's figures.
    session.install(".", "selenium>=4.20")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/bench_ssh.py")
    session.run("python", "benchmarks/bench_sources.py")
    session.run("python", "benchmarks/bench_warm.py", *session.posargs)
    session.run("python", "benchmarks/bench_dashboard.py")
    session.run("python", "benchmarks/bench_record.py")


@nox.session
def soak(session: nox.Session) -> None:
    """Three workers, 1,000 jobs, random restarts: counts lost and duplicated jobs (not in CI)."""
    session.install(".")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Start a local broker and a worker, run the bundled example playbook, show its live status."""
    session.install(".")
    session.run("python", "examples/demo.py")
