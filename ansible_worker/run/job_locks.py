"""Hold a job's group-wide locks around its run: which ones, waiting in `queued` (saying why), and giving them back.

A job holds at most `MAX_LOCKS` locks, which take at most `MAX_REQUEST_BYTES` as a lock
request (so that a request always fits one lock message); a job over either fails as it
starts, naming the cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.protocol.lock_messages import MAX_LOCKS, MAX_REQUEST_BYTES, LockRequest, request_bytes
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.job import Job

# A waiting status names at most this many of the locks that are taken, or of the workers not heard yet.
SHOWN_LOCKS = 20
MIB = 1024 * 1024


class LockService(Protocol):
    """The group's locks, as a worker offers them (`worker.group_locks.GroupLocks`)."""

    async def request(
        self,
        task_id: str,
        locks: frozenset[str],
        limits: tuple[tuple[str, int], ...],
        *,
        syncing: Callable[[list[str]], None],
    ) -> str: ...

    async def wait_granted(
        self, claim: str, *, waiting: Callable[[list[LockRequest]], None], syncing: Callable[[list[str]], None]
    ) -> None: ...

    async def release(self, claim: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Held:
    """How a job's wait for its locks ended: `gone` (it ended or was handed back meanwhile), or `error`."""

    gone: bool = False
    error: str | None = None


def limit_name(job: Job) -> str:
    """The name that `max_concurrent` counts: the job's template, else its project and playbook, or its module."""
    request = job.request
    if request.template is not None:
        return f"template:{request.template}"
    what = f"playbook:{request.playbook}" if request.playbook is not None else f"module:{request.module}"
    return f"{request.project or ''}/{what}"


class JobLocks:
    """A worker's locks for its jobs: host locks (unless `worker.host_locks` is false) and `max_concurrent`."""

    def __init__(self, service: LockService | None, *, host_locks: bool) -> None:
        self.service = service
        self.host_locks = host_locks

    def wanted(self, job: Job) -> bool:
        """Whether `job` takes any lock: host locks (unless `locks: []`), or a `max_concurrent`."""
        if self.service is None:
            return False
        request = job.request
        return request.max_concurrent is not None or (
            request.locks != [] and (self.host_locks or request.locks is not None)
        )

    @asynccontextmanager
    async def held(
        self, job: Job, hosts: Callable[[], Awaitable[frozenset[str]]], say: Callable[[], None]
    ) -> AsyncIterator[Held]:
        """Hold `job`'s locks for the block: its `locks`, else the `hosts` its inventory resolves to.

        While it waits, `job.waiting_for` names the locks that are taken and who holds them,
        and `say` publishes the status. The block is entered with `Held(gone=True)` when the
        job ended meanwhile (a cancel, a hand-back), with `Held(error=...)` when its locks
        cannot be had. The locks are given back when the block ends, however it ends.
        """
        if self.service is None or not self.wanted(job):
            yield Held()
            return
        request = job.request
        try:
            if request.locks is not None:
                names = frozenset(request.locks)
            elif self.host_locks:
                names = await hosts()
            else:
                names = frozenset()
        except JobRefusedError as exc:
            yield Held(error=str(exc))
            return
        except Exception as exc:
            # Opening the tree can fail as the run itself would (a fetch, a refused path).
            yield Held(error=f"cannot resolve the job's hosts for its locks: {exc}")
            return
        limits = ((limit_name(job), request.max_concurrent),) if request.max_concurrent is not None else ()
        if not names and not limits:
            yield Held()
            return
        too_many = over_the_cap(names, limits)
        if too_many is not None:
            yield Held(error=too_many)
            return
        claim, outcome = await self._acquire(job, names, limits, say)
        try:
            yield outcome
        finally:
            if claim is not None:
                await self.service.release(claim)

    async def _acquire(
        self, job: Job, names: frozenset[str], limits: tuple[tuple[str, int], ...], say: Callable[[], None]
    ) -> tuple[str | None, Held]:
        """Ask for the locks and wait until they are granted, or the job left; the request's claim (to release).

        Cancellation: a request already made is released.
        """
        assert self.service is not None
        service = self.service

        def waiting(blockers: list[LockRequest]) -> None:
            job.waiting_for = _waiting_for(job, names, blockers)
            say()

        def syncing(missing: list[str]) -> None:
            job.waiting_for = {"locks_sync": missing[:SHOWN_LOCKS]}
            say()

        claim: str | None = None
        gone = True
        try:
            # The error of a lone failing task, not a group of one, says what failed.
            with unwrap_lone_errors():
                async with trio.open_nursery() as nursery:

                    async def granted() -> None:
                        nonlocal claim, gone
                        claim = await service.request(job.task_id, names, limits, syncing=syncing)
                        await service.wait_granted(claim, waiting=waiting, syncing=syncing)
                        gone = False
                        nursery.cancel_scope.cancel()

                    async def left() -> None:
                        await job.wait_left()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(granted)
                    nursery.start_soon(left)
        except Exception as exc:
            what = "ask the group for" if claim is None else "get"
            return claim, Held(error=f"could not {what} the job's locks: {exc}")
        except BaseException:
            if claim is not None:
                await service.release(claim)
            raise
        return claim, Held(gone=gone or job.settled)


def over_the_cap(names: frozenset[str], limits: tuple[tuple[str, int], ...]) -> str | None:
    """Why a job may not hold `names` (and `limits`): more than `MAX_LOCKS`, or a request over `MAX_REQUEST_BYTES`."""
    if len(names) > MAX_LOCKS:
        return (
            f"the job would hold {len(names)} locks, more than the {MAX_LOCKS} a job may hold:"
            " narrow its limit, or give it its locks"
        )
    size = request_bytes(LockRequest("", "", "", names, limits))
    if size > MAX_REQUEST_BYTES:
        return (
            f"the job's locks take {size} bytes as a lock request, more than the {MAX_REQUEST_BYTES // MIB} MiB"
            " one may take: fewer or shorter lock names"
        )
    return None


def _waiting_for(job: Job, names: frozenset[str], blockers: list[LockRequest]) -> dict[str, Any]:
    first = blockers[0]
    taken = sorted({name for blocker in blockers for name in blocker.locks & names})
    said: dict[str, Any] = {"locks": taken[:SHOWN_LOCKS], "held_by": f"{first.task_id} on {first.worker_id}"}
    if len(taken) > SHOWN_LOCKS:
        said["locks_more"] = len(taken) - SHOWN_LOCKS
    if job.request.max_concurrent is not None and any(dict(blocker.limits) for blocker in blockers):
        said["max_concurrent"] = job.request.max_concurrent
    said["ahead"] = len(blockers)
    return said
