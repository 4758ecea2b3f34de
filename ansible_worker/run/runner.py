"""Run one job from `running` to its single terminal status: the error boundary of a run."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ansible_worker.ops.credentials import EnvCredential
from ansible_worker.ops.logging_setup import current_task_id
from ansible_worker.ops.logging_setup import secrets as log_secrets
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import State
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.argv import FIFO_VARIABLE, ansible_environment, job_argv
from ansible_worker.run.credential_injection import AnyCredential, Injection, inject, secret_values
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.events.event_fifo import EventFifo
from ansible_worker.run.events.event_stream import EventStream
from ansible_worker.run.events.progress import STATUS_EVENTS
from ansible_worker.run.events.record_collector import RecordCollector
from ansible_worker.run.executables import Executable
from ansible_worker.run.extra_vars import write_extra_vars
from ansible_worker.run.job import Job
from ansible_worker.run.job_locks import JobLocks
from ansible_worker.run.lock_targets import LockTargets
from ansible_worker.run.masking import Masker
from ansible_worker.run.policy import RequestChecks
from ansible_worker.run.process.launch import ExitRecord, Launch, ProcessStarter
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import run_process_group, run_with_output
from ansible_worker.run.retry_loop import run_attempts
from ansible_worker.run.run_directory import EVENT_FIFO_NAME, private_run_directory
from ansible_worker.run.sinks import EventSink, RecordSink, StatusSink
from ansible_worker.run.sources.job_sources import JobSources
from ansible_worker.run.verdict import judge
from ansible_worker.run.waiting import waiting
from ansible_worker.run.warm.pool import Configuration, WarmPool

log = logging.getLogger(__name__)

EVENT_FLUSH_SECONDS = 2.0
# Longest a job's record may hold back its terminal status (the broker is slow or away).
RECORD_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class RunLimits:
    """How long and how much one run may take, and where its private directory goes."""

    task_timeout: float = 3600.0
    kill_grace: float = 10.0
    output_limit_bytes: int = 1_048_576
    events_per_second: float = 200.0
    # None: the system's temporary directory.
    run_directory: Path | None = None


@dataclass(frozen=True, slots=True)
class RunEnvironment:
    """What every run starts from: its environment, the Ansible CLIs found with it, the secrets to mask.

    `variables` leaves out the worker's own settings and secrets (`argv.child_environment`);
    `worker_secrets` are the worker's own values that no job may show (masked in its output).
    """

    variables: Mapping[str, str]
    ansible_playbook: Executable
    worker_secrets: tuple[str, ...] = ()
    # The ad-hoc CLI and ansible-inventory, from the same installation as `ansible_playbook`.
    ansible: Executable | None = None
    ansible_inventory: Executable | None = None


class JobRunner:
    """Carries out jobs for one worker; `execute` is the error boundary of a job."""

    def __init__(
        self,
        limits: RunLimits,
        statuses: StatusSink,
        *,
        environment: RunEnvironment,
        checks: RequestChecks,
        sources: JobSources,
        warm_pool: WarmPool,
        topics: Topics,
        credentials: Mapping[str, AnyCredential] | None = None,
        events: EventSink | None = None,
        on_transition: Callable[[], None] = lambda: None,
        metrics: WorkerMetrics | None = None,
        records: RecordSink | None = None,
        locks: JobLocks | None = None,
        lock_targets: LockTargets | None = None,
    ) -> None:
        self.limits = limits
        self.statuses = statuses
        self.environment = environment
        self.checks = checks
        self.sources = sources
        # A component of the worker's own: it serves in the worker's nursery, not here.
        self.warm_pool = warm_pool
        self.topics = topics
        self.credentials = credentials or {}
        self.events = events
        self.on_transition = on_transition
        self.metrics = metrics or WorkerMetrics()
        self.records = records
        # The group's locks (none without a worker's broker session: `max_concurrent` and host locks off).
        self.locks = locks or JobLocks(None, host_locks=False)
        inventory = environment.ansible_inventory
        self.lock_targets = lock_targets or LockTargets(inventory.path if inventory is not None else None)
        # The start fence, awaited once the job holds its locks: False when it is not this worker's any more.
        self.may_start: Callable[[Job], Awaitable[bool]] | None = None

    def announce(self, job: Job) -> None:
        """Publish the job's current status and log the transition."""
        self.statuses.post(job.status())
        self.on_transition()
        if job.state.terminal:
            self.metrics.jobs_by_state[job.state.value] += 1
            if job.started_at is not None and job.completed_at is not None:
                self.metrics.job_duration.observe((job.completed_at - job.started_at).total_seconds())
            p = job.progress
            counts = f"ok={p.ok} changed={p.changed} failed={p.failed} skipped={p.skipped} unreachable={p.unreachable}"
            detail = f": {job.error_message}" if job.error_message else ""
            log.info("task %s %s (rc=%s, %s)%s", job.task_id, job.state, job.return_code, counts, detail)
        else:
            template = f"template {job.request.template}, " if job.request.template else ""
            log.info("task %s %s (%s%s)", job.task_id, job.state, template, job.request.what)

    async def execute(self, job: Job) -> None:
        """Run `job` and post exactly one terminal status for it to the status sink.

        Any `Exception` becomes a `failed` status; cancellation of the job's own scope (a
        cancel request, the timeout) becomes `cancelled` (or the job's `cancel_state`) or `timeout`,
        and `execute` returns normally.

        Cancellation: from outside the job (a hurried shutdown), the process group still gets
        SIGTERM, then SIGKILL after `kill_grace`, and its stragglers are killed, all before the
        cancellation propagates; the run directory is removed and the job's events are flushed
        (shielded, at most `EVENT_FLUSH_SECONDS`). The job then ends `cancelled` ("cancelled:
        worker stopped"), its terminal status posted and `done` set. It is over: do not run it again.
        """
        # Names the job in every record logged while it runs (its slot's task runs one job at a time).
        naming = current_task_id.set(job.task_id)
        # Masked from the first moment: a git error or a traceback may show a secret too.
        known = [self.credentials[name] for name in job.request.credentials if name in self.credentials]
        job.masker = Masker([*self.environment.worker_secrets, *secret_values(known), *job.request.secrets])
        try:
            with log_secrets.masking(lambda text: job.masker.text(text)):
                await self._execute(job)
        finally:
            current_task_id.reset(naming)

    async def _execute(self, job: Job) -> None:
        timeout = self.limits.task_timeout if job.request.timeout is None else job.request.timeout
        if self.events is not None:
            job.events = EventStream(self.topics.events(job.task_id), rate=self.limits.events_per_second)
        if self.records is not None:
            job.record = RecordCollector()
            job.record.request = job.masker.tree(job.request_document())
        # Stays so only if a cancellation from outside the job (a hurried shutdown) passes.
        state: State = State.CANCELLED
        error: str | None = "cancelled: worker stopped"
        gone = False
        try:
            # Its locks first, waiting in `queued`; then the start fence; the timeout counts from the start of the run.
            async with self.locks.held(job, partial(self._lock_hosts, job), partial(self._say, job)) as held:
                if held.gone or not await self._may_start(job):
                    # Ended (cancelled), handed back or taken over while it waited: the job table said so.
                    gone = True
                    return
                job.waiting_for = None
                job.state = State.RUNNING
                job.started_at = utc_now()
                self.announce(job)
                if held.error is not None:
                    state, error = State.FAILED, held.error
                else:
                    with job.cancel_scope:
                        job.cancel_scope.deadline = trio.current_time() + timeout
                        state, error = await self._bounded(job)
                    if job.cancel_scope.cancelled_caught:
                        if job.cancel_reason is not None:
                            state, error = job.cancel_state, job.cancel_reason
                        else:
                            state, error = State.TIMEOUT, f"timed out after {timeout:g}s"
        finally:
            if not gone:
                await self._end(job, state, error)

    async def _pull(self, job: Job) -> None:
        """`git pull` the playbook directory, if the job asks, once: before its hosts are resolved or it runs."""
        if job.request.git_pull and job.request.project is None and not job.pulled:
            job.pulled = True
            async with waiting(job, self.statuses, {"project_fetch": "playbook directory"}):
                await self.sources.pull(job.task_id)

    async def _may_start(self, job: Job) -> bool:
        """The start fence: the group hears that the job may start before it does; False if it is not this worker's.

        Only once its locks are held: a job waiting for them has not started in the group's eyes,
        so that a takeover runs it elsewhere rather than ending it as lost.
        """
        if self.may_start is not None and not await self.may_start(job):
            return False
        return not job.settled

    def _say(self, job: Job) -> None:
        """Publish the status of a job that is waiting, with its `waiting_for`."""
        self.statuses.post(job.status())

    async def _lock_hosts(self, job: Job) -> frozenset[str]:
        """The hosts the job's inventory and limit resolve to, in the tree it runs from, with its environment.

        Errors: `JobRefusedError` when they cannot be told (ansible-inventory fails, a path is refused).
        """
        request = job.request
        await self._pull(job)
        async with self.sources.open_tree(request) as tree:
            base = tree.path.resolve()
            resolved = self.checks.check_tree(request, base)
            env = dict(self.environment.variables)
            for name in request.credentials:
                credential = self.credentials.get(name)
                if isinstance(credential, EnvCredential):
                    env.update({key: value.get_secret_value() for key, value in credential.variables.items()})
            return await self.lock_targets.hosts(resolved.inventory, request.limit, cwd=base, env=env)

    async def _end(self, job: Job, state: State, error: str | None) -> None:
        """Flush the job's events, end it, publish its record, then its terminal status."""
        await self._flush_events(job)
        job.end(state, job.masker.text(error) if error is not None else None)
        await self._publish_record(job)
        job.done.set()
        self.announce(job)

    async def _bounded(self, job: Job) -> tuple[State, str | None]:
        """The run's end as a state and an error: every `Exception` of it becomes `failed`."""
        try:
            return await self._run(job)
        except JobRefusedError as exc:
            return State.FAILED, str(exc)
        except OSError as exc:
            return State.FAILED, f"cannot start: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        except Exception as exc:
            log.exception("task %s: unexpected error", job.task_id)
            return State.FAILED, f"internal error: {type(exc).__name__}: {exc}"

    async def _flush_events(self, job: Job) -> None:
        """The job's events go out before its terminal status: a watcher that sees the status has seen them all."""
        if job.events is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(EVENT_FLUSH_SECONDS):
            await job.events.wait_flushed()
        self.metrics.events_dropped += job.events.dropped

    async def _publish_record(self, job: Job) -> None:
        """Publish the job's record before its terminal status, which then names it; shielded, bounded."""
        if self.records is None or job.record is None or job.fenced:
            # A fenced job's end is another worker's to publish.
            return
        with trio.CancelScope(shield=True), trio.move_on_after(RECORD_SECONDS):
            try:
                job.record_summary = await self.records.publish_record(job.status(), job.record)
            except Exception:
                # The record is an extra: whatever went wrong, the job's status goes out.
                log.exception("task %s: its record could not be built", job.task_id)

    async def _run(self, job: Job) -> tuple[State, str | None]:
        request = job.request
        self.checks.policy.check_request(request)
        fetched = {"project_fetch": request.project or "playbook directory"}
        await self._pull(job)
        async with contextlib.AsyncExitStack() as stack:
            async with waiting(job, self.statuses, fetched):
                # A project's tree may need a fetch first.
                tree = await stack.enter_async_context(self.sources.open_tree(request))
            job.tree = tree
            if tree.revision is not None or tree.content_sha256 is not None:
                # Said as soon as it is known, not only at the end.
                self.statuses.post(job.status())
            return await self._run_in(job, tree.path.resolve())

    async def _run_in(self, job: Job, base: Path) -> tuple[State, str | None]:
        request = job.request
        resolved = self.checks.check_tree(request, base)
        with private_run_directory(self.limits.run_directory, job.task_id) as run_dir:
            self.statuses.started(job.task_id, run_dir)
            extra_vars = write_extra_vars(run_dir, request.extra_vars) if request.extra_vars else None
            fifo_path = run_dir / EVENT_FIFO_NAME
            marker = (FIFO_VARIABLE, str(fifo_path))
            credentials = [self.credentials[name] for name in request.credentials]
            async with inject(credentials, run_dir, environment=self.environment.variables, marker=marker) as injection:
                env = ansible_environment(
                    {**self.environment.variables, **injection.env}, fifo_path, ad_hoc=request.ad_hoc
                )
                launch = Launch((), base, env, kill_grace=self.limits.kill_grace, marker=marker)
                run = partial(self._attempt, job, launch, injection, fifo_path)
                argv = partial(
                    job_argv,
                    playbook=resolved.playbook,
                    inventory=resolved.inventory,
                    extra_vars_file=extra_vars,
                    ansible_playbook=self.environment.ansible_playbook,
                    ansible=self.environment.ansible,
                )
                return await run_attempts(job, lambda again: run(argv(again)), self.statuses)

    async def _attempt(
        self, job: Job, base: Launch, injection: Injection, fifo_path: Path, argv: list[str]
    ) -> tuple[State, str | None]:
        """One run of Ansible with `argv` (and `base`'s directory and environment); its verdict.

        Each run reads its events from a new FIFO at the same path: the path marks the job's
        processes (`base.marker`) for as long as its credentials are injected.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo_path)
        fifo = EventFifo(fifo_path)
        try:
            # The credentials' options go before the `--` that ends them.
            argv = [*argv[:-2], *injection.argv, *argv[-2:]]
            launch = dataclasses.replace(base, argv=tuple(argv))
            returncode, tail = await self._run_ansible(job, launch, fifo, injection)
        finally:
            fifo.close()
        return judge(returncode, job.progress, tail, fifo)

    async def _run_ansible(
        self, job: Job, launch: Launch, fifo: EventFifo, injection: Injection
    ) -> tuple[int, OutputTail]:
        """Run Ansible for `job`, warm if it may, with its events read alongside; its exit code and output.

        An ad-hoc command starts cold: warm parents hold `ansible-playbook`'s imports, and an
        ad-hoc command is rare enough that a parent of its own would cost more than it saves.
        """
        tail = OutputTail(self.limits.output_limit_bytes, mask=job.masker.window)
        if job.record is not None:
            job.record.output = tail
        start: ProcessStarter
        if job.request.ad_hoc:
            self.metrics.cold_starts += 1
            start = run_process_group
        else:
            configuration = Configuration(launch.argv[0], launch.cwd, launch.env)
            async with waiting(job, self.statuses, {"warm_parent": "starting"}):
                start = await self.warm_pool.starter(configuration, late=injection.own)
        record = ExitRecord()
        try:
            returncode = await run_with_output(
                launch,
                start=start,
                tail=tail,
                record=record,
                side_reader=lambda exited: fifo.read_events(lambda event: self._on_event(job, event), exited=exited),
            )
        finally:
            job.return_code = record.returncode
        return returncode, tail

    def _on_event(self, job: Job, event: dict[str, Any]) -> None:
        self.metrics.events_processed += 1
        # Masked once, here: counts, output, first failure and live events all come from it.
        event = job.masker.tree(event)
        job.progress.apply(event)
        if job.record is not None:
            job.record.add(event)
        if self.events is not None and job.events is not None and not job.fenced:
            self.events.offer(job.events, event)
        if event.get("event") in STATUS_EVENTS and not job.state.terminal:
            self.statuses.post_progress(job.task_id, lambda: job.status(progress_only=True))
