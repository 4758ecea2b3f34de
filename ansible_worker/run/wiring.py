"""Build the run layer's parts from the worker's settings, once: each part gets the small frozen values it needs.

The only module of `run` that reads `WorkerSettings` (for its type alone: the settings module is
never loaded from here); the parts themselves never see the settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from types import MappingProxyType
from typing import TYPE_CHECKING

from ansible_worker.ops.credentials import MIN_SECRET_LENGTH
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.argv import FIFO_VARIABLE, ansible_environment, child_environment
from ansible_worker.run.credential_injection import strict_host_keys
from ansible_worker.run.executables import find_ansible_beside, find_ansible_inventory, find_ansible_playbook
from ansible_worker.run.job_locks import JobLocks, LockService
from ansible_worker.run.policy import JobPolicy, RequestChecks
from ansible_worker.run.run_directory import EVENT_FIFO_NAME
from ansible_worker.run.runner import JobRunner, RunEnvironment, RunLimits
from ansible_worker.run.sinks import EventSink, RecordSink, StatusSink
from ansible_worker.run.sources.job_sources import ContentSource, JobSources
from ansible_worker.run.warm.pool import Configuration, WarmPolicy, WarmPool

if TYPE_CHECKING:
    from ansible_worker.ops.config import WorkerSettings

log = logging.getLogger(__name__)


def run_limits(settings: WorkerSettings) -> RunLimits:
    """`worker.task_timeout`, `kill_grace`, `output_limit_bytes`, `events_per_second`, `run_directory`."""
    return RunLimits(
        task_timeout=settings.task_timeout,
        kill_grace=settings.kill_grace,
        output_limit_bytes=settings.output_limit_bytes,
        events_per_second=settings.events_per_second,
        run_directory=settings.run_directory,
    )


def warm_policy(settings: WorkerSettings) -> WarmPolicy:
    """`worker.warm_start` and `warm_*`."""
    return WarmPolicy(
        enabled=settings.warm_start,
        size=settings.warm_pool_size,
        max_forks=settings.warm_max_forks,
        max_rss_kib=settings.warm_max_rss_mb * 1024,
        start_timeout=settings.warm_start_timeout,
    )


def job_policy(settings: WorkerSettings) -> JobPolicy:
    """`worker.allowed_playbooks`, `allowed_inventories` and the other limits on what a job may ask."""
    return JobPolicy(
        allowed_playbooks=settings.allowed_playbooks,
        allowed_inventories=settings.allowed_inventories,
        allow_inline_inventory=settings.allow_inline_inventory,
        max_verbosity=settings.max_verbosity,
        max_extra_vars_bytes=settings.max_extra_vars_bytes,
        max_extra_vars_depth=settings.max_extra_vars_depth,
        allowed_special_vars=frozenset(settings.allowed_special_vars),
        ad_hoc_modules=frozenset(settings.ad_hoc_modules),
    )


def run_environment(settings: WorkerSettings, *, hidden_values: Collection[str] = ()) -> RunEnvironment:
    """What Ansible and git start with, and the `ansible-playbook` found with it.

    `hidden_values` are the worker's own secrets: left out of the environment, masked in output.

    Synchronous: reads the environment and looks for `ansible-playbook` on its PATH, once, at start.
    """
    variables = child_environment(
        os.environ,
        extra={name: value.get_secret_value() for name, value in settings.environment.items()},
        hidden_values=hidden_values,
    )
    if settings.known_hosts is not None:
        variables.update(strict_host_keys(settings.known_hosts, variables))
    # The worker's own secrets are masked in every job's output, as the job's credentials are.
    secrets = [*(secret.get_secret_value() for secret in settings.environment.values()), *hidden_values]
    # Found once, with the PATH the jobs get; the default name falls back to the worker's own environment.
    ansible_playbook = find_ansible_playbook(settings.ansible_playbook_path, variables)
    if ansible_playbook.path is None:
        log.warning("worker.ansible_playbook_path: %s; every job will fail", ansible_playbook.describe())
    else:
        log.info("jobs run %s", ansible_playbook.describe())
    return RunEnvironment(
        # Read-only: every run starts from the same environment.
        variables=MappingProxyType(variables),
        ansible_playbook=ansible_playbook,
        ansible=find_ansible_beside(ansible_playbook),
        ansible_inventory=find_ansible_inventory(ansible_playbook, variables),
        worker_secrets=tuple(value for value in secrets if len(value) >= MIN_SECRET_LENGTH),
    )


def job_runner(
    settings: WorkerSettings,
    statuses: StatusSink,
    *,
    topics: Topics,
    events: EventSink | None = None,
    on_transition: Callable[[], None] = lambda: None,
    hidden_values: Collection[str] = (),
    metrics: WorkerMetrics | None = None,
    content: ContentSource | None = None,
    records: RecordSink | None = None,
    locks: LockService | None = None,
) -> JobRunner:
    """The worker's `JobRunner`, with its sources, request checks and warm pool (`runner.warm_pool`, to be served)."""
    metrics = metrics or WorkerMetrics()
    environment = run_environment(settings, hidden_values=hidden_values)
    # Where each job's playbooks come from; `content` fetches what jobs ship.
    sources = JobSources(settings, environment=environment.variables, content=content)
    executable = environment.ansible_playbook.path
    if executable is None:
        # Nothing to start warm: every job starts cold (and fails to, saying why).
        warm_pool = WarmPool(WarmPolicy(enabled=False), metrics=metrics)
    else:
        base = settings.playbook_directory
        # The configuration most jobs have; a job's own FIFO is not part of it (`late`).
        first = Configuration(executable, base, ansible_environment(environment.variables, base / EVENT_FIFO_NAME))
        warm_pool = WarmPool(warm_policy(settings), metrics=metrics, late=(FIFO_VARIABLE,), prepare=first)
    return JobRunner(
        run_limits(settings),
        statuses,
        environment=environment,
        checks=RequestChecks(job_policy(settings), sources, credentials=settings.credentials),
        sources=sources,
        warm_pool=warm_pool,
        topics=topics,
        credentials=settings.credentials,
        events=events,
        on_transition=on_transition,
        metrics=metrics,
        records=records,
        locks=JobLocks(locks, host_locks=settings.host_locks),
    )
