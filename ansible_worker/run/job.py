"""Run one job from start to its single terminal status: git pull, run directory, ansible-playbook."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ansible_worker.ops.credentials import MIN_SECRET_LENGTH
from ansible_worker.ops.logging_setup import current_task_id
from ansible_worker.ops.logging_setup import secrets as log_secrets
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import JobStatus, RecordSummary, State, TaskRequest
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.argv import (
    FIFO_VARIABLE,
    ansible_environment,
    build_argv,
    child_environment,
    resolve_inventory,
    resolve_playbook,
)
from ansible_worker.run.credential_injection import (
    Injection,
    credential_error,
    inject,
    secret_values,
    strict_host_keys,
)
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.events.event_fifo import EventFifo
from ansible_worker.run.events.event_stream import EventStream
from ansible_worker.run.events.progress import STATUS_EVENTS, Progress
from ansible_worker.run.executables import find_ansible_playbook
from ansible_worker.run.extra_vars import write_extra_vars
from ansible_worker.run.masking import Masker
from ansible_worker.run.policy import JobPolicy
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import ExitRecord, run_with_output
from ansible_worker.run.sources.job_sources import ContentSource, JobSources, RunTree

if TYPE_CHECKING:
    # For its type only: the run layer never loads the settings module itself.
    from ansible_worker.ops.config import WorkerSettings
from ansible_worker.run.events.record_collector import RecordCollector
from ansible_worker.run.warm.pool import WarmPool, open_warm_pool

log = logging.getLogger(__name__)

EVENT_FLUSH_SECONDS = 2.0
# Longest a job's record may hold back its terminal status (the broker is slow or away).
RECORD_SECONDS = 5.0
RUN_DIRECTORY_PREFIX = "ansible-worker-"
EVENT_FIFO_NAME = "events.fifo"


class StatusSink(Protocol):
    """Where a job's statuses go (the worker's one status path)."""

    def post(self, status: JobStatus) -> None:
        """A change of state, or the terminal status; never blocks."""

    def post_progress(self, task_id: str, build: Callable[[], JobStatus]) -> None:
        """A `running` update, built when it is about to be published; never blocks."""

    def started(self, task_id: str, run_dir: Path) -> None:
        """The job's private run directory exists: its processes will carry its name."""


class EventSink(Protocol):
    """Where a job's live events go; `offer` never blocks (an event may be dropped)."""

    def offer(self, stream: EventStream, raw: Mapping[str, Any]) -> None:
        """Send one callback event on `stream`, or count it dropped."""


class RecordSink(Protocol):
    """Where a finished job's record goes, before its terminal status."""

    async def publish_record(self, status: JobStatus, record: RecordCollector) -> RecordSummary | None:
        """Publish the record of the job that ended with `status`; what was published, or None.

        Cancellation: the record may or may not have reached the broker.
        """


@dataclass(eq=False)
class Job:
    """One accepted job and everything known about it so far."""

    request: TaskRequest
    worker_id: str
    # The message as it arrived, to hand it back to the group unchanged.
    payload: bytes = b""
    created_at: datetime = field(default_factory=utc_now)
    state: State = State.QUEUED
    started_at: datetime | None = None
    completed_at: datetime | None = None
    return_code: int | None = None
    error_message: str | None = None
    progress: Progress = field(default_factory=Progress)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # The terminal error_message if the job is cancelled, and who asked, if known.
    cancel_reason: str | None = None
    # `failed` when the worker itself ends a job it cannot report (its status would not serialize).
    cancel_state: State = State.CANCELLED
    cancelled_by: str | None = None
    events: EventStream | None = None
    # The job's secrets (its credentials', the worker's environment's), masked in what it reports.
    masker: Masker = field(default_factory=lambda: Masker(()))
    handed_back: bool = False
    # The tree it runs from, once known: what its status reports as having run.
    tree: RunTree | None = None
    done: trio.Event = field(default_factory=trio.Event)
    # Every event and the output, for the record published when the job ends.
    record: RecordCollector | None = None
    record_summary: RecordSummary | None = None

    @property
    def task_id(self) -> str:
        """The request's `task_id`."""
        return self.request.task_id

    @property
    def settled(self) -> bool:
        """Nothing more for this worker to do: ended, or given back to the group."""
        return self.state.terminal or self.handed_back

    def status(self, *, progress_only: bool = False) -> JobStatus:
        """The status now; with `progress_only`, a `running` status with the counts so far.

        A progress status may be built after the job has ended (the outbox builds them
        late), so it never takes the state, end or error from a later moment.
        """
        progress = self.progress
        state, completed_at, error = self.state, self.completed_at, self.error_message
        if progress_only:
            state, completed_at, error = State.RUNNING, None, None
        end = completed_at or utc_now()
        duration = (end - self.started_at).total_seconds() if self.started_at else None
        return JobStatus(
            task_id=self.task_id,
            state=state,
            created_at=self.created_at,
            started_at=self.started_at,
            completed_at=completed_at,
            duration_seconds=round(duration, 3) if duration is not None else None,
            tasks_total=progress.total,
            tasks_ok=progress.ok,
            tasks_changed=progress.changed,
            tasks_failed=progress.failed,
            tasks_skipped=progress.skipped,
            tasks_unreachable=progress.unreachable,
            return_code=None if progress_only else self.return_code,
            error_message=error,
            output=progress.output,
            worker_id=self.worker_id,
            playbook=self.request.playbook,
            current_play=progress.current_play,
            current_task=progress.current_task if not state.terminal else None,
            tasks_rescued=progress.rescued,
            tasks_ignored=progress.ignored,
            output_per_host=progress.output_per_host,
            cancelled_by=self.cancelled_by,
            last_event_seq=self.events.last_seq if self.events else 0,
            events_dropped=self.events.dropped if self.events else 0,
            project=self.tree.project if self.tree else self.request.project,
            revision=self.tree.revision if self.tree else None,
            content_sha256=self.request.content.sha256 if self.request.content else None,
            record=None if progress_only else self.record_summary,
        )

    def finish(self, state: State, error_message: str | None = None) -> None:
        """End the job in `state` with `error_message`: stamp `completed_at` and set `done`."""
        self.end(state, error_message)
        self.done.set()

    def end(self, state: State, error_message: str | None = None) -> None:
        """Put the job in its terminal `state` and stamp `completed_at`, without setting `done` yet."""
        self.state = state
        self.error_message = error_message
        self.completed_at = utc_now()


class JobRunner:
    """Carries out jobs for one worker; `execute` is the error boundary of a job."""

    def __init__(
        self,
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
    ) -> None:
        self.settings = settings
        self.records = records
        self.statuses = statuses
        self.topics = topics
        self.events = events
        self.on_transition = on_transition
        self.policy = JobPolicy(
            allowed_playbooks=settings.allowed_playbooks,
            allowed_inventories=settings.allowed_inventories,
            allow_inline_inventory=settings.allow_inline_inventory,
            max_verbosity=settings.max_verbosity,
            max_extra_vars_bytes=settings.max_extra_vars_bytes,
            max_extra_vars_depth=settings.max_extra_vars_depth,
            allowed_special_vars=frozenset(settings.allowed_special_vars),
        )
        self._git_lock = trio.Lock()
        self.metrics = metrics or WorkerMetrics()
        # Set while `serve_warm_pool` runs.
        self._warm: WarmPool | None = None
        # What Ansible and git start with; `hidden_values` are the worker's own secrets.
        self._child_environment = child_environment(
            os.environ,
            extra={name: value.get_secret_value() for name, value in settings.environment.items()},
            hidden_values=hidden_values,
        )
        if settings.known_hosts is not None:
            self._child_environment.update(strict_host_keys(settings.known_hosts, self._child_environment))
        # The worker's own secrets are masked in every job's output, as the job's credentials are.
        self._worker_secrets = [
            value
            for value in [*(secret.get_secret_value() for secret in settings.environment.values()), *hidden_values]
            if len(value) >= MIN_SECRET_LENGTH
        ]
        # Where each job's playbooks come from; `content` fetches what jobs ship.
        self.sources = JobSources(settings, environment=self._child_environment, content=content)
        # Found once, with the PATH the jobs get; the default name falls back to the worker's own environment.
        self.ansible_playbook = find_ansible_playbook(settings.ansible_playbook_path, self._child_environment)
        if self.ansible_playbook.path is None:
            log.warning("worker.ansible_playbook_path: %s; every job will fail", self.ansible_playbook.describe())
        else:
            log.info("jobs run %s", self.ansible_playbook.describe())

    async def serve_warm_pool(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the warm Ansible parents of `worker.warm_start` until cancelled (at the worker's end).

        Without it (or with `warm_start: false`) every job starts cold.

        Cancellation: the pool's parents are ended, and with them any job still forked from one.
        """
        settings = self.settings
        if not settings.warm_start or self.ansible_playbook.path is None:
            task_status.started()
            return
        async with open_warm_pool(
            size=settings.warm_pool_size,
            max_forks=settings.warm_max_forks,
            max_rss_kib=settings.warm_max_rss_mb * 1024,
            start_timeout=settings.warm_start_timeout,
            late=(FIFO_VARIABLE,),
            metrics=self.metrics,
        ) as pool:
            pool.prepare(
                self.ansible_playbook.path,
                cwd=settings.playbook_directory,
                env=ansible_environment(self._child_environment, settings.playbook_directory / EVENT_FIFO_NAME),
            )
            self._warm = pool
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._warm = None

    def admission_error(self, request: TaskRequest) -> str | None:
        """Why `request` cannot run here, judged before it is queued; None if it may.

        The policy and, unless the job pulls first (its files may not exist yet), the
        playbook and inventory paths. A request refused here never becomes a job, so its
        answer cannot replace the status of a job that ran on another worker.
        """
        base = self.settings.playbook_directory
        refusal = self._credential_error(request, self.settings.playbook_directory)
        if refusal is not None:
            return refusal
        source_error = self.sources.admission_error(request)
        if source_error is not None:
            return source_error
        try:
            self.policy.check_request(request)
            # A snapshot's or shipped tree's files are known only once it is made.
            if not request.git_pull and self.sources.uses_playbook_directory(request):
                playbook = resolve_playbook(base, request.playbook)
                inventory = resolve_inventory(base, request.inventory)
                self.policy.check_paths(base, playbook, inventory)
        except JobRefusedError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read the playbook directory: {exc.strerror or exc}"
        return None

    def _credential_error(self, request: TaskRequest, base: Path) -> str | None:
        """Why the job may not have its credentials, judged on the playbook file under `base`."""
        if not request.credentials:
            return None
        try:
            playbook = resolve_playbook(base, request.playbook).relative_to(base.resolve()).as_posix()
        except (JobRefusedError, OSError, ValueError):
            # Not a file there (yet): only the tree the job runs from can tell, when it runs.
            playbook = request.playbook
        own_tree = request.content is None and request.project is None and request.revision is None
        return credential_error(request.credentials, playbook, self.settings.credentials, own_tree=own_tree)

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
            log.info("task %s %s (playbook %s)", job.task_id, job.state, job.request.playbook)

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
        known = [
            self.settings.credentials[name] for name in job.request.credentials if name in self.settings.credentials
        ]
        job.masker = Masker([*self._worker_secrets, *secret_values(known)])
        try:
            with log_secrets.masking(lambda text: job.masker.text(text)):
                await self._execute(job)
        finally:
            current_task_id.reset(naming)

    async def _execute(self, job: Job) -> None:
        timeout = self.settings.task_timeout if job.request.timeout is None else job.request.timeout
        if self.events is not None:
            job.events = EventStream(self.topics.events(job.task_id), rate=self.settings.events_per_second)
        if self.records is not None:
            job.record = RecordCollector()
        job.state = State.RUNNING
        job.started_at = utc_now()
        self.announce(job)
        # Stays so only if a cancellation from outside the job (a hurried shutdown) passes.
        state: State = State.CANCELLED
        error: str | None = "cancelled: worker stopped"
        try:
            with job.cancel_scope:
                job.cancel_scope.deadline = trio.current_time() + timeout
                try:
                    state, error = await self._run(job)
                except JobRefusedError as exc:
                    state, error = State.FAILED, str(exc)
                except OSError as exc:
                    state, error = (
                        State.FAILED,
                        f"cannot start: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                    )
                except Exception as exc:
                    log.exception("task %s: unexpected error", job.task_id)
                    state, error = State.FAILED, f"internal error: {type(exc).__name__}: {exc}"
            if job.cancel_scope.cancelled_caught:
                if job.cancel_reason is not None:
                    state, error = job.cancel_state, job.cancel_reason
                else:
                    state, error = State.TIMEOUT, f"timed out after {timeout:g}s"
        finally:
            if job.events is not None:
                # Its events go out before its terminal status, so a watcher that sees the
                # status has seen every event it is going to see.
                with trio.CancelScope(shield=True), trio.move_on_after(EVENT_FLUSH_SECONDS):
                    await job.events.wait_flushed()
                self.metrics.events_dropped += job.events.dropped
            job.end(state, job.masker.text(error) if error is not None else None)
            await self._publish_record(job)
            job.done.set()
            self.announce(job)

    async def _publish_record(self, job: Job) -> None:
        """Publish the job's record before its terminal status, which then names it; shielded, bounded."""
        if self.records is None or job.record is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(RECORD_SECONDS):
            try:
                job.record_summary = await self.records.publish_record(job.status(), job.record)
            except Exception:
                # The record is an extra: whatever went wrong, the job's status goes out.
                log.exception("task %s: its record could not be built", job.task_id)

    async def _run(self, job: Job) -> tuple[State, str | None]:
        request = job.request
        self.policy.check_request(request)
        if request.git_pull and request.project is None:
            await self._git_pull(job)
        async with self.sources.open_tree(request) as tree:
            job.tree = tree
            if tree.revision is not None or tree.content_sha256 is not None:
                # Said as soon as it is known, not only at the end.
                self.statuses.post(job.status())
            return await self._run_in(job, tree.path.resolve())

    async def _run_in(self, job: Job, base: Path) -> tuple[State, str | None]:
        request = job.request
        playbook = resolve_playbook(base, request.playbook)
        inventory = resolve_inventory(base, request.inventory)
        self.policy.check_paths(base, playbook, inventory)
        # Judged again on the tree that runs, and with the settings of now (a job from the journal).
        refusal = self._credential_error(request, base)
        if refusal is not None:
            raise JobRefusedError(refusal)
        with private_run_directory(self.settings.run_directory, job.task_id) as run_dir:
            self.statuses.started(job.task_id, run_dir)
            extra_vars = write_extra_vars(run_dir, request.extra_vars) if request.extra_vars else None
            argv = build_argv(
                request,
                executable=self.ansible_playbook.command,
                playbook=playbook,
                inventory=inventory,
                extra_vars_file=extra_vars,
            )
            fifo = EventFifo(run_dir / EVENT_FIFO_NAME)
            marker = (FIFO_VARIABLE, str(fifo.path))
            credentials = [self.settings.credentials[name] for name in request.credentials]
            try:
                async with inject(
                    credentials, run_dir, environment=self._child_environment, marker=marker
                ) as injection:
                    returncode, tail = await self._run_ansible(job, base, fifo, marker, argv, injection)
            finally:
                fifo.close()
        return self._judge(job, returncode, tail, fifo)

    async def _run_ansible(
        self, job: Job, base: Path, fifo: EventFifo, marker: tuple[str, str], argv: list[str], injection: Injection
    ) -> tuple[int, OutputTail]:
        """Run ansible-playbook for `job` in its tree `base`, with its credentials; its exit code and output tail."""
        # The credentials' options go before the `--` that ends them.
        argv = [*argv[:-2], *injection.argv, *argv[-2:]]
        env = ansible_environment({**self._child_environment, **injection.env}, fifo.path)
        tail = OutputTail(self.settings.output_limit_bytes, mask=job.masker.window)
        if job.record is not None:
            job.record.output = tail
        start = None
        if self._warm is not None and self.ansible_playbook.path is not None:
            start = await self._warm.starter(self.ansible_playbook.path, cwd=base, env=env, late=injection.own)
        else:
            # Warm start is off (or its pool is not running): every job starts cold.
            self.metrics.cold_starts += 1
        record = ExitRecord()
        try:
            returncode = await run_with_output(
                argv,
                cwd=base,
                env=env,
                start=start,
                marker=marker,
                kill_grace=self.settings.kill_grace,
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
        if self.events is not None and job.events is not None:
            self.events.offer(job.events, event)
        if event.get("event") in STATUS_EVENTS and not job.state.terminal:
            self.statuses.post_progress(job.task_id, lambda: job.status(progress_only=True))

    def _judge(self, job: Job, returncode: int, tail: OutputTail, fifo: EventFifo) -> tuple[State, str | None]:
        """How the run ended, from Ansible's exit code and what its events said.

        A failing run is reported by what failed; a run that exited 0 succeeded only if its
        event stream was complete and readable, since the counts come from it.
        """
        if returncode < 0:
            name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
            return State.FAILED, f"ansible-playbook was killed by {name}{_so_far(job)}"
        if returncode != 0:
            if job.progress.first_failure is not None:
                return State.FAILED, job.progress.first_failure
            return State.FAILED, f"ansible-playbook exited with code {returncode}: {_ansible_error(tail)}"
        if fifo.invalid_lines:
            return State.FAILED, (
                f"ansible-playbook sent {fifo.invalid_lines} unreadable event lines (exit code 0):"
                " its counts cannot be trusted"
            )
        if not fifo.opened:
            return State.FAILED, "ansible-playbook exited 0 but sent no events: the event plugin did not run"
        if not job.progress.stats_seen:
            return State.FAILED, "ansible-playbook exited 0 without its final statistics: the run was cut short"
        return State.SUCCESS, None

    async def _git_pull(self, job: Job) -> None:
        """`git pull --ff-only` in the playbook directory, one job at a time, bounded."""
        env = {**self._child_environment, "GIT_TERMINAL_PROMPT": "0"}
        argv = [self.settings.git_path, "pull", "--ff-only"]
        tail = OutputTail(65536)
        async with self._git_lock:
            log.info("task %s: git pull in %s", job.task_id, self.settings.playbook_directory)
            with trio.move_on_after(self.settings.git_timeout) as bound:
                try:
                    returncode = await run_with_output(
                        argv,
                        cwd=self.settings.playbook_directory,
                        env=env,
                        kill_grace=self.settings.kill_grace,
                        tail=tail,
                        record=ExitRecord(),
                    )
                except OSError as exc:
                    raise JobRefusedError(
                        f"git pull failed: cannot start {self.settings.git_path!r}: {exc.strerror}"
                    ) from exc
        if bound.cancelled_caught:
            raise JobRefusedError(f"git pull timed out after {self.settings.git_timeout:g}s")
        if returncode != 0:
            message = " | ".join(tail.last_lines(4)) or "no output"
            raise JobRefusedError(f"git pull failed (exit {returncode}): {message[-1000:]}")


def _so_far(job: Job) -> str:
    task = job.progress.current_task
    return f" during task '{task}'" if task else ""


def _ansible_error(tail: OutputTail) -> str:
    """Ansible's own error line (`[ERROR]: ...`, or `ERROR! ...` before 2.19), else the last lines."""
    lines = tail.last_lines(200)
    for index, line in enumerate(lines):
        if line.startswith(("[ERROR]", "ERROR!")):
            origin = lines[index + 1] if index + 1 < len(lines) and lines[index + 1].startswith("Origin:") else ""
            return f"{line} {origin}".strip()[:1000]
    return (" | ".join(lines[-3:]) or "no output")[-1000:]


@contextmanager
def private_run_directory(parent: Path | None, task_id: str) -> Iterator[Path]:
    """A fresh directory (mode 0700) for one run, removed with everything in it afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"{RUN_DIRECTORY_PREFIX}{task_id[:40]}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
