"""A worker's way out: stop taking jobs, hand queued ones back, let running ones finish or end them, say offline."""

from __future__ import annotations

import logging

import trio

from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.worker.hand_back import HandBack
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.lost_workers import LostWorkers
from ansible_worker.worker.notifications import Notifier
from ansible_worker.worker.phases import Phase
from ansible_worker.worker.policies import DrainPolicy
from ansible_worker.worker.presence import PresenceAnnouncer, WorkerState
from ansible_worker.worker.status_path import StatusPath

__all__ = ["OFFLINE_TIMEOUT", "SHUTDOWN_MARGIN", "Drain"]

log = logging.getLogger(__name__)

# Time left after the jobs' own kill grace for their statuses to reach the broker.
SHUTDOWN_MARGIN = 5.0
OFFLINE_TIMEOUT = 2.0


class Drain:
    """The drain of one worker, as its `DrainPolicy` says; `hurry` cuts the wait for running jobs short."""

    def __init__(
        self,
        policy: DrainPolicy,
        *,
        session: BrokerSession,
        tasks_subscription: str,
        jobs: JobTable,
        hand_back: HandBack,
        presence: PresenceAnnouncer,
        statuses: StatusPath,
        lost: LostWorkers,
        notifier: Notifier | None,
    ) -> None:
        self.policy = policy
        self.session, self.tasks_subscription = session, tasks_subscription
        self.jobs, self.hand_back, self.presence, self.statuses = jobs, hand_back, presence, statuses
        self.lost, self.notifier = lost, notifier
        self._wait = trio.CancelScope()
        self._hurry = False

    def hurry(self) -> None:
        """Stop waiting for running jobs to finish: they are cancelled."""
        self._hurry = True
        self._wait.cancel()

    async def run(self, serving: trio.CancelScope) -> None:
        """Stop taking jobs, hand queued ones back, let running ones finish in time, or end them."""
        drain = self.policy
        log.info(
            "draining: no new jobs; %d queued to hand back, %d running (waiting up to %gs)",
            self.jobs.count(Phase.QUEUED),
            self.jobs.running_count,
            0 if self._hurry else drain.timeout,
        )
        self.presence.set_state(WorkerState.DRAINING)
        self.lost.stop()
        with trio.move_on_after(1):
            await self.session.unsubscribe(self.tasks_subscription)
        queued = self.jobs.stop_taking()
        async with trio.open_nursery() as handing_back:
            # All at once, each step bounded: with the broker away, one at a time would add up.
            for task_id in queued:
                handing_back.start_soon(self.hand_back.hand_back, task_id)
            self._wait.deadline = trio.current_time() + drain.timeout
            with self._wait:
                await self.jobs.wait_idle()
            if left := self.jobs.count(Phase.QUEUED, Phase.RUNNING):
                reason = "a second signal" if self._hurry else f"the drain timeout ({drain.timeout:g}s)"
                log.info("cancelling %d running jobs after %s", left, reason)
                self.jobs.end_running("cancelled: worker shutting down")
        # The jobs end their process groups (SIGTERM, kill_grace, SIGKILL), then the slots stop.
        serving.deadline = trio.current_time() + drain.kill_grace + SHUTDOWN_MARGIN

    async def say_goodbye(self) -> None:
        """Flush the statuses, then say offline; each bounded."""
        with trio.move_on_after(SHUTDOWN_MARGIN) as flush:
            await self.statuses.wait_idle()
        if flush.cancelled_caught:
            log.warning("%d statuses could not be published before exit", self.statuses.pending_count)
        if self.notifier is not None:
            # The jobs' last notifications, within a bound of their own: a target that never
            # answers must not hold the worker's exit.
            self.notifier.close()
            with trio.move_on_after(SHUTDOWN_MARGIN) as sending:
                await self.notifier.finished.wait()
            if sending.cancelled_caught:
                log.warning("notifications still being sent at exit were given up")
        # Its own bound: a slow flush must not leave the presence saying `draining` for ever.
        with trio.move_on_after(OFFLINE_TIMEOUT):
            await self.presence.publish_offline()
