"""Keep a few warm Ansible parents (one per configuration key) and choose how each job starts: warm or cold.

A warm parent (`script/warm_parent.py`, run under Ansible's own Python) has run the imports of
the `ansible-playbook` script; a job forked from it skips them. The pool is bounded and
least recently used parents give way; a parent is retired after `max_forks` forks, when
its memory grows past `max_rss_kib`, when a file it read has changed, or when a place where
Ansible looks for its configuration changed while it started; it is replaced when it dies
(its running jobs then fail with a reason) or does not answer a fork request (killed; the
job starts cold). Any doubt about a job's configuration means a cold start instead, with
the reason logged; a configuration a parent refused is remembered, for many more
configurations than the pool holds parents.

A job's own variables (its event FIFO, its credentials) never reach a parent: they are not
in its key, and the job's argv and environment go from the worker to the job's process
through a pipe of their own, once that process exists.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.process.launch import ExitRecord, Launch, ProcessStarter
from ansible_worker.run.process.process_group import run_process_group
from ansible_worker.run.warm.forked_run import run_forked
from ansible_worker.run.warm.key import ColdStart, find_interpreter, read_at_start, warm_key
from ansible_worker.run.warm.parent import WarmParent

log = logging.getLogger(__name__)

# Seconds a configuration whose parent could not start is given cold starts before a retry.
START_FAILURE_BACKOFF = 60.0
# A refusal follows from the configuration itself (its `log_path`, say): it is remembered
# longer, and for many more configurations than the pool holds parents.
REFUSAL_BACKOFF = 600.0
REMEMBERED_FAILURES = 1024


@dataclass(frozen=True, slots=True)
class WarmPolicy:
    """How jobs may start warm (`worker.warm_*`): without `enabled`, every job starts cold."""

    enabled: bool = True
    size: int = 2
    max_forks: int = 200
    max_rss_kib: int = 512 * 1024
    start_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Configuration:
    """What a job starts with, as far as a warm parent is concerned: the script, its directory and environment."""

    executable: str
    cwd: Path
    env: Mapping[str, str]


class WarmPool:
    """Parents by key, least recently used first; `starter` picks or starts the one for a job.

    A component of the worker: `serve` (or `open`) keeps the parents for as long as it runs.
    While it does not run, or without `policy.enabled`, every job starts cold.
    """

    def __init__(
        self,
        policy: WarmPolicy,
        *,
        metrics: WorkerMetrics,
        late: Collection[str] = (),
        prepare: Configuration | None = None,
    ) -> None:
        self.policy = policy
        self.metrics = metrics
        # Variables of every job that are its own (its event FIFO): never given to a parent.
        self.late = frozenset(late)
        # The configuration most jobs will have: its parent starts with the pool.
        self._prepare = prepare
        self._nursery: trio.Nursery | None = None
        self._parents: OrderedDict[str, WarmParent] = OrderedDict()
        self._retired: set[WarmParent] = set()
        # Keys whose parent refused them or died before it was ready: until when they start
        # cold, and why (the least recently noted go first, beyond `REMEMBERED_FAILURES`).
        self._failed: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the warm parents until cancelled (at the worker's end); started at once.

        Cancellation: the pool's parents are ended, and with them any job still forked from one.
        """
        if not self.policy.enabled:
            task_status.started()
            return
        async with self.open():
            task_status.started()
            await trio.sleep_forever()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[WarmPool]:
        """The pool, serving for the length of the block: its parents live in a nursery of their own.

        Cancellation: leaving the block (also by cancellation) ends every parent, and each
        parent ends the jobs still forked from it.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                if self._prepare is not None:
                    self.prepare(self._prepare)
                yield self
            finally:
                self._nursery = None
                self.close()

    @property
    def parents(self) -> int:
        """How many parents are alive (serving ones and retired ones still running jobs)."""
        return len(self._parents) + len(self._retired)

    def _publish_size(self) -> None:
        self.metrics.warm_pool_size = len(self._parents)

    def prepare(self, job: Configuration) -> None:
        """Start a parent for the configuration most jobs will have, so the first job is warm too."""
        try:
            self._parent_for(job, late=self.late)
        except ColdStart as exc:
            log.info("no warm Ansible parent prepared: %s", exc)

    def _parent_for(self, job: Configuration, *, late: Collection[str]) -> WarmParent:
        interpreter = find_interpreter(job.executable, job.env)
        key = warm_key(interpreter, cwd=job.cwd, env=job.env, late=late)
        parent = self._parents.get(key.digest)
        if parent is not None and not parent.ended.is_set():
            self._parents.move_to_end(key.digest)
            return parent
        if parent is not None:
            del self._parents[key.digest]
        failed = self._failed.get(key.digest)
        if failed is not None and trio.current_time() < failed[0]:
            raise ColdStart(f"the warm parent for this configuration could not start: {failed[1]}")
        self._failed.pop(key.digest, None)
        while len(self._parents) >= self.policy.size:
            _, oldest = self._parents.popitem(last=False)
            self._retire(oldest)
        parent = WarmParent(key, interpreter, cwd=job.cwd, env={k: v for k, v in job.env.items() if k not in late})
        self._parents[key.digest] = parent
        self.metrics.warm_parents_started += 1
        assert self._nursery is not None, "the warm pool is not serving"
        self._nursery.start_soon(self._own, parent)
        self._publish_size()
        return parent

    async def _own(self, parent: WarmParent) -> None:
        """The error boundary of one parent: whatever it raises ends it, never the pool."""
        try:
            await parent.run()
        except Exception as exc:
            log.exception("warm Ansible parent %s failed", parent.pid)
            parent.lost_reason = f"the warm Ansible parent failed: {type(exc).__name__}: {exc}"
        finally:
            self._retired.discard(parent)
            if self._parents.get(parent.key) is parent:
                del self._parents[parent.key]
                if parent.refusal is not None:
                    # Not lost: it looked at its configuration and said no.
                    self._remember_failure(parent.key, parent.lost_reason or parent.refusal, REFUSAL_BACKOFF)
                    log.info(
                        "%s; jobs with this configuration start cold (asked again after %gs)",
                        parent.lost_reason,
                        REFUSAL_BACKOFF,
                    )
                elif not parent.retiring:
                    self.metrics.warm_parents_lost += 1
                    if not parent.ready.is_set():
                        # It never got as far as importing Ansible: do not retry it for every job.
                        self._remember_failure(parent.key, parent.lost_reason or "unknown", START_FAILURE_BACKOFF)
                        log.warning(
                            "%s before it was ready; jobs with its configuration start cold for %gs",
                            parent.lost_reason,
                            START_FAILURE_BACKOFF,
                        )
                    else:
                        log.warning("%s; the next job with its configuration starts a new one", parent.lost_reason)
            self._publish_size()

    def _remember_failure(self, key: str, reason: str, seconds: float) -> None:
        self._failed[key] = (trio.current_time() + seconds, reason)
        self._failed.move_to_end(key)
        while len(self._failed) > REMEMBERED_FAILURES:
            self._failed.popitem(last=False)

    def _retire(self, parent: WarmParent) -> None:
        parent.retiring = True
        if self._parents.get(parent.key) is parent:
            del self._parents[parent.key]
        if parent.active:
            self._retired.add(parent)
        else:
            parent.close()
        self._publish_size()

    async def starter(self, job: Configuration, *, late: Collection[str] = ()) -> ProcessStarter:
        """How to start this job: warm from a parent, or cold (counted, and logged with the reason).

        `late` names the job's own variables (its credentials'): they go to the job's process
        only, so none of them may be one that Ansible reads when it starts.

        Cancellation: the wait for a new parent to be ready is bounded by `start_timeout`;
        cancelling it leaves the parent starting for later jobs.
        """
        if self._nursery is None:
            # Warm start is off (or the pool is not serving): every job starts cold.
            self.metrics.cold_starts += 1
            return run_process_group
        own = frozenset(late) | self.late
        try:
            # Reads the script and the few ansible.cfg candidates: small local files, cheaper
            # than a thread hop.
            parent = self._parent_for(job, late=own)
            with trio.move_on_after(self.policy.start_timeout):
                await _first(parent.ready, parent.ended)
            if parent.ended.is_set():
                raise ColdStart(parent.lost_reason or "the warm parent exited")
            if not parent.ready.is_set():
                raise ColdStart(f"the warm parent was not ready within {self.policy.start_timeout:g}s")
            if parent.stale:
                self._retire(parent)
                raise ColdStart(f"the warm parent is being replaced: {parent.stale_reason}")
            early = sorted(name for name in own if name in job.env and read_at_start(name, parent.early))
            if early:
                raise ColdStart(
                    f"the job's own {', '.join(early)} may be read when Ansible starts: a warm parent would hold it"
                )
        except ColdStart as exc:
            return self._cold(exc)
        return partial(self._run_in, parent)

    def _cold(self, reason: ColdStart) -> ProcessStarter:
        self.metrics.cold_starts += 1
        log.info("cold start: %s", reason)
        return run_process_group

    async def _run_in(self, parent: WarmParent, launch: Launch, record: ExitRecord) -> int:
        try:
            try:
                run = await parent.start_run(output_fd=launch.output_fd)
            except ColdStart as exc:
                # Refused before anything ran (a file it read changed, say): this job starts cold.
                if parent.stale:
                    self._retire(parent)
                return await self._cold(exc)(launch, record)
            self.metrics.warm_starts += 1
            return await run_forked(parent, run, launch, record)
        finally:
            self._check_retirement(parent)

    def _check_retirement(self, parent: WarmParent) -> None:
        if parent.ended.is_set():
            return
        if not parent.retiring:
            rss = _rss_kib(parent.pid)
            if parent.forks >= self.policy.max_forks or rss > self.policy.max_rss_kib:
                log.info("retiring the warm Ansible parent %s after %d forks (%d KiB)", parent.pid, parent.forks, rss)
                self._retire(parent)
        elif parent.active == 0:
            self._retired.discard(parent)
            parent.close()

    def close(self) -> None:
        """End every parent (and with it any job still forked from one)."""
        for parent in [*self._parents.values(), *self._retired]:
            parent.retiring = True
            parent.close()


async def _first(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


def _rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
