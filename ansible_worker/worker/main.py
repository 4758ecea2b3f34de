"""`ansible-worker run` and `validate`: serve until a signal stops the worker, or print what it would do."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from ansible_worker.ops.config import ConfigError, Settings, load_settings
from ansible_worker.ops.logging_setup import setup_logging
from ansible_worker.run.sources.job_sources import SourceCacheError, cache_problem
from ansible_worker.templates.loading import TemplatesError
from ansible_worker.worker.service import Worker
from ansible_worker.worker.summary import executables, summarize
from ansible_worker.worker.templating import worker_templates

log = logging.getLogger("ansible_worker")

EXIT_CONFIG = 2


def run_worker(config: Path | None, *, validate: bool) -> int:
    """Load the settings, then print a summary (`validate`) or serve until SIGINT/SIGTERM; the exit code."""
    try:
        settings = load_settings(config)
        _check_paths(settings)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_CONFIG
    if validate:
        print(summarize(settings, config))
        return 0
    setup_logging(settings.log_level, log_format=settings.log_format, worker_id=settings.worker.worker_id)
    # The worker's job runner says which ansible-playbook it found; git is only needed for git_pull.
    git = executables(settings)[1]
    if git.path is None:
        log.warning("worker.git_path: %s; jobs with git_pull will fail", git.describe())
    if (risk := settings.lost_after_warning()) is not None:
        log.warning("%s", risk)
    return trio.run(_serve, settings)


def _print_problems(problems: list[str]) -> None:
    print("configuration error:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _check_paths(settings: Settings) -> None:
    """Refuse directories that other local users could change, and a templates file that cannot be used.

    Errors: `ConfigError`, naming the key.
    """
    problem = cache_problem(settings.worker)
    if problem is not None:
        raise ConfigError([problem])
    try:
        worker_templates(settings)
    except TemplatesError as exc:
        raise ConfigError(exc.problems) from None


async def _serve(settings: Settings) -> int:
    worker = Worker(settings)
    try:
        # Made (and checked once more) before anything starts; `serve` finds it ready.
        worker.runner.sources.prepare()
    except SourceCacheError as exc:
        _print_problems([str(exc)])
        return EXIT_CONFIG
    async with trio.open_nursery() as nursery:
        # The signal receiver stays open for the whole run, so a second signal is seen
        # too instead of killing the process with a traceback.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(_watch_signals, signals, worker)
            await worker.serve()
            nursery.cancel_scope.cancel()
    return 0


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
