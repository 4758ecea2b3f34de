"""This worker's side of the group's host locks: ask for a job's locks, wait its turn, renew them, give them back.

The order that decides is the broker's order of the one locks topic (`protocol.locks`).
Before its first request, a worker that has just started asks the others what they hold (a
`sync`) and waits until each worker it knows of has answered, has stopped cleanly (a
drained worker holds nothing), or has been silent for `lost_after` (lost: its jobs are the
group's to take over, and its requests go with them): a request published after that comes
after every request that is live. A will is no such answer: a worker whose link dropped may
hold requests still, and says them again when it reconnects.

A lock request ends when its job ends here, or when the group takes the job over (`taken_over`,
told by the claims). Renewals only keep a request from lapsing, a safety net set at
`LAPSE_FACTOR` times `lost_after`: long after the group has judged a silent worker lost and
taken its jobs over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import trio

from ansible_worker.mqtt.link import InboundMessage
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.claims import new_claim_id
from ansible_worker.protocol.locks import LockBook, LockKind, LockRequest, lock_document, read_lock_message
from ansible_worker.protocol.signing import Signer, TrustedKeys
from ansible_worker.protocol.topics import Topics

log = logging.getLogger(__name__)

# A request lapses unrenewed after this many times `lost_after`; renewals go out five times as often.
LAPSE_FACTOR = 10
RENEWALS_PER_LAPSE = 5
# A new worker looks this often whether the workers that have not said what they hold are lost.
SYNC_LOOK_EVERY = 1.0
# The longest the broker may take to send this worker's own request back.
ECHO_TIMEOUT = 10.0


class LockFailed(Exception):
    """The broker did not confirm a lock request in time: the job cannot safely run."""


@dataclass(frozen=True, slots=True)
class LockPolicy:
    """Who signs this worker's lock messages and whose count (as for claims)."""

    signer: Signer | None = None
    trusted: TrustedKeys | None = None


class GroupLocks:
    """Lock requests made and heard by one worker, over its broker session."""

    def __init__(
        self,
        session: BrokerSession,
        topics: Topics,
        *,
        worker_id: str,
        policy: LockPolicy,
        lost_after: float,
    ) -> None:
        self.session = session
        self.topics = topics
        self.worker_id = worker_id
        self.policy = policy
        self.lapse = LAPSE_FACTOR * lost_after
        # The other workers that may hold requests: neither lost nor stopped cleanly (the group's liveness).
        self.peers: Callable[[], list[str]] = list
        self.book = LockBook()
        self._mine: dict[str, LockRequest] = {}
        self._echoes: dict[str, trio.Event] = {}
        self._changed = trio.Event()
        self._renew_now = trio.Event()
        self._synced = trio.Event()
        self._sync_sent = False
        self._answered: set[str] = set()

    # -- hearing ---------------------------------------------------------------------

    def hear(self, message: InboundMessage) -> None:
        """Apply one message of the locks topic, and wake whoever waits on locks."""
        verify = None
        if self.policy.trusted is not None:
            trusted, topic = self.policy.trusted, self.topics.locks

            def verify(document: object) -> object:
                assert isinstance(document, dict)
                return trusted.verify(topic, document)

        heard = read_lock_message(message.payload, now=trio.current_time(), wall_now=datetime.now(UTC), verify=verify)
        if heard is None:
            if message.payload:
                log.debug("ignoring a message on the locks topic that is not a lock message")
            return
        if heard.worker_id == self.worker_id:
            if heard.kind == "sync":
                self._sync_sent = True
            for request in heard.requests:
                echo = self._echoes.get(request.claim)
                if echo is not None:
                    echo.set()
        elif heard.kind == "sync":
            # A worker that has just started asks what is held: say it now.
            self._renew_now.set()
        elif heard.kind == "renew" and self._sync_sent:
            self._answered.add(heard.worker_id)
        self.book.hear(heard, now=trio.current_time())
        self._check_synced()
        self._wake()

    def taken_over(self, task_id: str, holder: str) -> None:
        """`holder`'s claim holds `task_id` now: the requests other workers made for it end (a takeover)."""
        ended = self.book.taken_over(task_id, holder)
        if ended:
            workers = ", ".join(sorted({request.worker_id for request in ended}))
            log.warning("task %s: taken over by %s; the locks %s held for it are free", task_id, holder, workers)
            self._wake()

    def renew_soon(self) -> None:
        """Say this worker's requests again now (after a reconnection: a sync may have gone by)."""
        self._renew_now.set()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _check_synced(self) -> None:
        if not self._sync_sent or self._synced.is_set():
            return
        if set(self.peers()) - {self.worker_id} <= self._answered:
            self._synced.set()

    # -- serving ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ask the group what it holds, then renew this worker's requests until cancelled.

        Cancellation: this worker's requests stop being renewed and expire unless released.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew)
            task_status.started()
            # Answering other workers' syncs does not wait for this one.
            await self._sync()

    async def _renew(self) -> None:
        while True:
            with trio.move_on_after(self.lapse / RENEWALS_PER_LAPSE):
                await self._renew_now.wait()
            self._renew_now = trio.Event()
            try:
                await self._publish("renew", requests=list(self._mine.values()))
            except Exception as exc:
                # The next renewal tries again; a request lives several renewals.
                log.warning("could not renew this worker's lock requests: %s", exc)

    async def _sync(self) -> None:
        """Until every worker alive has said what it holds; a silent one counts once it is lost (`lost_after`).

        Cancellation: this worker asks for no locks meanwhile.
        """
        while not self._sync_sent:
            try:
                await self._publish("sync")
            except Exception as exc:
                log.warning("could not ask the group which locks are held (trying again): %s", exc)
                await trio.sleep(SYNC_LOOK_EVERY)
                continue
            with trio.move_on_after(ECHO_TIMEOUT):
                while not self._sync_sent:
                    await self._changed.wait()
        warned = False
        while True:
            self._check_synced()
            if self._synced.is_set():
                return
            with trio.move_on_after(SYNC_LOOK_EVERY):
                await self._synced.wait()
            if not warned and not self._synced.is_set():
                warned = True
                missing = sorted(set(self.peers()) - self._answered - {self.worker_id})
                log.info("waiting for workers %s to say which locks they hold, or to be lost", missing)

    # -- a job's locks ---------------------------------------------------------------

    async def request(self, task_id: str, locks: frozenset[str], limits: tuple[tuple[str, int], ...]) -> str:
        """Ask for `locks` for `task_id`; the request's claim, in the book once the broker sent it back.

        Errors: `LockFailed` when the broker does not send it back within `ECHO_TIMEOUT`.
        Cancellation: the request may be out; `release` it.
        """
        await self._synced.wait()
        request = LockRequest(new_claim_id(), task_id, self.worker_id, locks, limits)
        self._mine[request.claim] = request
        echo = self._echoes[request.claim] = trio.Event()
        try:
            with trio.move_on_after(ECHO_TIMEOUT) as bound:
                await self._publish("acquire", requests=[request])
                await echo.wait()
        finally:
            del self._echoes[request.claim]
        if bound.cancelled_caught:
            raise LockFailed(f"the broker did not send the lock request back within {ECHO_TIMEOUT:g}s")
        return request.claim

    async def wait_granted(self, claim: str, *, waiting: Callable[[list[LockRequest]], None]) -> None:
        """Until no request before `claim` stands in its way; `waiting` hears who does, at each change.

        Errors: `LockFailed` when the request is gone from the book (taken over, or lapsed unrenewed).
        Cancellation: the request stays; `release` it.
        """
        shown: list[LockRequest] | None = None
        while True:
            now = trio.current_time()
            if not self.book.holds(claim, now=now):
                raise LockFailed("the lock request expired before it was granted")
            blockers = self.book.blockers(claim, now=now)
            if not blockers:
                return
            if blockers != shown:
                shown = blockers
                waiting(blockers)
            changed = self._changed
            # A request may also lapse unannounced (the safety net): look again now and then.
            with trio.move_on_after(self.lapse / RENEWALS_PER_LAPSE):
                await changed.wait()

    async def release(self, claim: str) -> None:
        """Give back the request `claim`; shielded and bounded, it goes out even as its job is cancelled."""
        self._mine.pop(claim, None)
        with trio.CancelScope(shield=True), trio.move_on_after(ECHO_TIMEOUT):
            try:
                await self._publish("release", releases=[claim])
            except Exception as exc:
                log.warning("could not release a lock request (it lapses unrenewed): %s", exc)

    async def _publish(
        self, kind: LockKind, *, requests: list[LockRequest] | None = None, releases: list[str] | None = None
    ) -> None:
        expires_at = datetime.now(UTC) + timedelta(seconds=self.lapse)
        document = lock_document(
            kind, self.worker_id, requests=requests or (), releases=releases or (), expires_at=expires_at
        )
        if self.policy.signer is not None:
            document = self.policy.signer.sign(self.topics.locks, document)
        await self.session.publish(self.topics.locks, json.dumps(document).encode(), qos=1)
