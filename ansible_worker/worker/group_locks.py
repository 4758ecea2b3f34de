"""This worker's side of the group's host locks: ask for a job's locks, wait its turn, renew them, give them back.

The order that decides is the broker's order of the one locks topic (`protocol.locks`).
Before its first request, a worker that has just started asks the others what they hold (a
`sync`) and waits, bounded, until each worker it knows to be online has answered: a request
published after that comes after every request that is live.
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

# A request lives this long without a renewal; renewals go out three times as often.
LOCK_LIFETIME = 60.0
RENEW_EVERY = LOCK_LIFETIME / 3
# The longest a new worker waits for the others to say what they hold.
SYNC_TIMEOUT = 10.0
# A worker whose will says it went offline keeps its locks this long, in case its link only
# dropped and it comes back; then they are free.
OFFLINE_GRACE = 10.0
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
        online_peers: Callable[[], list[str]],
    ) -> None:
        self.session = session
        self.topics = topics
        self.worker_id = worker_id
        self.policy = policy
        self.online_peers = online_peers
        self.book = LockBook()
        self._mine: dict[str, LockRequest] = {}
        self._echoes: dict[str, trio.Event] = {}
        self._changed = trio.Event()
        self._renew_now = trio.Event()
        self._synced = trio.Event()
        self._sync_sent = False
        self._answered: set[str] = set()
        # When the soonest request known to lapse early does (a worker gone offline).
        self._next_lapse = float("inf")
        self._offline: set[str] = set()

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

    def peer_state(self, worker_id: str, state: str | None) -> None:
        """Another worker's presence changed: gone (its will, a cleared presence), its requests lapse after
        `OFFLINE_GRACE`; back online, they hold again until it renews them."""
        if worker_id == self.worker_id:
            return
        now = trio.current_time()
        if state in ("offline", None):
            lapsing = self.book.expire_worker(worker_id, at=now + OFFLINE_GRACE)
            if lapsing:
                # Bounded: only workers that hold requests are remembered.
                self._offline.add(worker_id)
                log.info(
                    "worker %s went offline: the locks of %s are freed in %gs unless it comes back",
                    worker_id,
                    ", ".join(lapsing),
                    OFFLINE_GRACE,
                )
            self._wake_at(now + OFFLINE_GRACE)
        elif worker_id in self._offline:
            # Back before its requests lapsed (a link that dropped): they hold until it renews them.
            self._offline.discard(worker_id)
            self.book.extend_worker(worker_id, until=now + LOCK_LIFETIME)
        self._check_synced()
        self._wake()

    def _wake_at(self, moment: float) -> None:
        self._next_lapse = min(self._next_lapse, moment)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _check_synced(self) -> None:
        if self._sync_sent and not self._synced.is_set() and set(self.online_peers()) <= self._answered:
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
            with trio.move_on_after(RENEW_EVERY):
                await self._renew_now.wait()
            self._renew_now = trio.Event()
            try:
                await self._publish("renew", requests=list(self._mine.values()))
            except Exception as exc:
                # The next renewal tries again; a request lives three renewals.
                log.warning("could not renew this worker's lock requests: %s", exc)

    async def _sync(self) -> None:
        with trio.move_on_after(SYNC_TIMEOUT):
            try:
                await self._publish("sync")
            except Exception as exc:
                log.warning("could not ask the group which locks are held: %s", exc)
            self._check_synced()
            await self._synced.wait()
        if not self._synced.is_set():
            missing = sorted(set(self.online_peers()) - self._answered)
            log.warning(
                "workers %s did not say which locks they hold within %gs; going on without", missing, SYNC_TIMEOUT
            )
            self._synced.set()

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

        Errors: `LockFailed` when the request is gone from the book (it expired unrenewed).
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
            # Requests also lapse with time, unannounced: look again when one may have.
            with trio.move_on_at(min(self._next_lapse + 0.01, trio.current_time() + RENEW_EVERY)):
                await changed.wait()
            if trio.current_time() >= self._next_lapse:
                self._next_lapse = float("inf")

    async def release(self, claim: str) -> None:
        """Give back the request `claim`; shielded and bounded, it goes out even as its job is cancelled."""
        self._mine.pop(claim, None)
        with trio.CancelScope(shield=True), trio.move_on_after(ECHO_TIMEOUT):
            try:
                await self._publish("release", releases=[claim])
            except Exception as exc:
                log.warning("could not release a lock request (it expires unrenewed): %s", exc)

    async def _publish(
        self, kind: LockKind, *, requests: list[LockRequest] | None = None, releases: list[str] | None = None
    ) -> None:
        expires_at = datetime.now(UTC) + timedelta(seconds=LOCK_LIFETIME)
        document = lock_document(
            kind, self.worker_id, requests=requests or (), releases=releases or (), expires_at=expires_at
        )
        if self.policy.signer is not None:
            document = self.policy.signer.sign(self.topics.locks, document)
        await self.session.publish(self.topics.locks, json.dumps(document).encode(), qos=1)
