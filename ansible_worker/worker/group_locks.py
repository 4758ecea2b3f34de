"""This worker's side of the group's host locks: ask for a job's locks, wait its turn, renew them, give them back.

The order that decides is the broker's order of the one locks topic (`protocol.locks`). A
worker decides its own requests from its own book, so its book must hold every live request
made before them. On every link (the first, and each after a drop or a broker restart: no
lock message is retained, so whatever went by meanwhile is lost to it) it asks the group what
it holds (`lock_sync`) and waits, before it asks for or grants anything, until each worker it
knows of has answered, has stopped cleanly (a drained worker holds nothing), or has been silent
for `lost_after` (lost: its jobs are the group's to take over, and its requests go with them).
A will is no such answer: a worker whose link dropped may hold requests still. A request the
broker sent back on a link whose sync was complete comes after every request this worker had
not heard; one sent back otherwise is withdrawn and made again.

A lock request ends when its job ends here, or when the group takes the job over (`taken_over`,
told by the claims). A request that was not confirmed (not sent back in time, a publish that
failed, its job cancelled meanwhile) is withdrawn at once. A release is sent again until the
broker has taken it, and said again when another worker syncs (`lock_releases`). Renewals only
keep a request from lapsing, a safety net set at `LAPSE_FACTOR` times `lost_after` and counted
on this worker's monotonic clock while it is connected and not frozen: long after the group
has judged a silent worker lost and taken its jobs over. No wall clock decides anything here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import trio

from ansible_worker.mqtt.link import InboundMessage, LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.config import MIN_FREEZE
from ansible_worker.protocol.claims import new_claim_id
from ansible_worker.protocol.lock_messages import (
    LockRequest,
    read_lock_message,
)
from ansible_worker.protocol.locks import LockBook
from ansible_worker.protocol.signing import Signer, TrustedKeys
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.lock_messenger import LockMessenger
from ansible_worker.worker.lock_releases import Releases
from ansible_worker.worker.lock_sync import LockSync

log = logging.getLogger(__name__)

# A request lapses unheard after this many times `lost_after`; renewals go out five times as often.
LAPSE_FACTOR = 10
RENEWALS_PER_LAPSE = 5
# How often a worker that waits for the group's answers looks whether the silent ones are lost;
# it asks again after SYNC_ASK_FIRST, then twice as long each time, up to SYNC_ASK_MOST.
SYNC_LOOK_EVERY = 1.0
SYNC_ASK_FIRST = 2.0
SYNC_ASK_MOST = 30.0
# The longest the broker may take to send this worker's own request back.
ECHO_TIMEOUT = 10.0
# The longest a job's end waits for its release to go out; one that did not is sent again this often.
RELEASE_TIMEOUT = 2.0
RELEASE_RETRY = 2.0

Syncing = Callable[[list[str]], None]


class LockFailed(Exception):
    """A lock request was not confirmed, or was lost before it was granted: the job cannot safely run."""


@dataclass(frozen=True, slots=True)
class LockPolicy:
    """Who signs this worker's lock messages and whose count (as for claims)."""

    signer: Signer | None = None
    trusted: TrustedKeys | None = None


class LockClock:
    """The time that counts toward a request's lapse: the monotonic clock, while connected and not frozen.

    A gap between two looks longer than `freeze_after` (this process stopped, or starved) does
    not count: the messages that came meanwhile have not been read yet.
    """

    def __init__(self, *, freeze_after: float) -> None:
        self.freeze_after = freeze_after
        self.counted = 0.0
        self._last: float | None = None

    def look(self, now: float, *, connected: bool) -> float:
        """The counted time at `now`."""
        if self._last is not None and connected and 0 < now - self._last <= self.freeze_after:
            self.counted += now - self._last
        self._last = now
        return self.counted


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
        self.messenger = LockMessenger(session, topics, worker_id=worker_id, lifetime=self.lapse, signer=policy.signer)
        self.book = LockBook()
        self.sync = LockSync(worker_id)
        self.releases = Releases(keep=self.lapse)
        self.clock = LockClock(freeze_after=max(lost_after / 2, MIN_FREEZE))
        self._mine: dict[str, LockRequest] = {}
        self._echoes: dict[str, trio.Event] = {}
        self._changed = trio.Event()
        self._renew_now = trio.Event()

    # -- hearing ---------------------------------------------------------------------

    def hear(self, message: InboundMessage) -> None:
        """Apply one message of the locks topic, and wake whoever waits on locks."""
        heard = read_lock_message(message.payload, wall_now=datetime.now(UTC), verify=self._verifier())
        if heard is None:
            if message.payload:
                log.debug("ignoring a message on the locks topic that is not a lock message")
            return
        if heard.worker_id == self.worker_id:
            if heard.kind == "sync":
                self.sync.heard_own(heard.round)
            for request in heard.requests:
                echo = self._echoes.get(request.claim)
                if echo is not None:
                    echo.set()
        elif heard.kind == "sync":
            # Another worker asks what is held: say it now, and the releases it may have missed.
            self.sync.asked(heard.round)
            self._renew_now.set()
        elif heard.kind == "renew":
            self.sync.heard_renewal(heard.worker_id, heard.answers)
        self.book.hear(heard, now=self._look())
        self._wake()

    def _verifier(self) -> Callable[[Mapping[str, Any]], datetime | None] | None:
        if self.policy.trusted is None:
            return None
        trusted, topic = self.policy.trusted, self.topics.locks
        return lambda document: trusted.verify(topic, document).issued_at

    def taken_over(self, task_id: str, holder: str) -> None:
        """`holder`'s claim holds `task_id` now: the requests other workers made for it end (a takeover)."""
        ended = self.book.taken_over(task_id, holder)
        if ended:
            workers = ", ".join(sorted({request.worker_id for request in ended}))
            log.warning("task %s: taken over by %s; the locks %s held for it are free", task_id, holder, workers)
            self._wake()

    def connected(self) -> None:
        """A link came up: say this worker's requests and unsent releases again now, and wake the waiters."""
        self._renew_now.set()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _look(self) -> float:
        return self.clock.look(trio.current_time(), connected=self.session.connected)

    def _ready(self) -> bool:
        """Whether this worker's book holds what the group holds: its current link's sync is complete."""
        return self.session.connected and self.sync.synced_on == self.session.connections

    # -- serving ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ask the group what it holds on every link, and renew this worker's requests, until cancelled.

        Cancellation: this worker's requests stop being renewed and lapse unless released.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew)
            nursery.start_soon(self._tick)
            task_status.started()
            # Answering other workers' syncs does not wait for this one.
            await self._keep_synced()

    async def _tick(self) -> None:
        while True:
            self._look()
            await trio.sleep(SYNC_LOOK_EVERY)

    async def _keep_synced(self) -> None:
        """Sync each link as it comes up; the waiters look again at each new link."""
        while True:
            await self.session.wait_connected()
            link = self.session.connections
            if self.sync.synced_on != link:
                await self.session.unless_reconnected(link, partial(self._sync, link))
            else:
                await self.session.wait_connection_after(link)
                self._wake()

    async def _sync(self, link: int) -> None:
        """Until every worker alive has answered this link's sync; a silent one counts once it is lost (`lost_after`).

        Cancellation (a newer link): its round is given up.
        """
        current = self.sync.begin(link)
        self._wake()
        began = trio.current_time()
        # Asked again for a worker that missed the question (its own link was down), less often each time.
        asked_at: float | None = None
        ask_after, warned = SYNC_ASK_FIRST / 2, False
        while not self.sync.complete(self.peers()):
            changed = self._changed
            now = trio.current_time()
            if asked_at is None or now - asked_at >= ask_after:
                asked_at, ask_after = now, min(2 * ask_after, SYNC_ASK_MOST)
                try:
                    await self.messenger.sync(current.id)
                except LinkError as exc:
                    log.warning("could not ask the group which locks are held (trying again): %s", exc)
            if not warned and now - began > SYNC_ASK_FIRST:
                warned = True
                log.info("waiting for workers %s to say which locks they hold, or to be lost", self.missing())
            with trio.move_on_after(SYNC_LOOK_EVERY):
                await changed.wait()
        self.sync.finish()
        self._wake()

    def missing(self) -> list[str]:
        """The workers whose answer this worker still waits for before it grants a lock."""
        return self.sync.missing(self.peers())

    async def _renew(self) -> None:
        """Say this worker's requests every lapse / RENEWALS_PER_LAPSE, and at once when asked; its releases too."""
        owed = False
        while True:
            wait = self.lapse / RENEWALS_PER_LAPSE
            if owed or self.releases.unsent:
                wait = min(wait, RELEASE_RETRY)
            with trio.move_on_after(wait):
                await self._renew_now.wait()
            self._renew_now = trio.Event()
            link = await self.session.current_link()
            # What is said is taken on the link it goes out on: after every sync this worker heard.
            rounds, any_asked = self.sync.take_asked()
            releases = self.releases.to_send(now=trio.current_time(), all_recent=any_asked)
            try:
                await self.messenger.say_all(link, releases, list(self._mine.values()), rounds, sent=self.releases.sent)
            except Exception as exc:
                self.sync.give_back(rounds, any_asked)
                owed = True
                # Soon again; a request lives several renewals.
                log.warning("could not renew this worker's lock requests (trying again): %s", exc)
            else:
                owed = False

    # -- a job's locks ---------------------------------------------------------------

    async def request(
        self, task_id: str, locks: frozenset[str], limits: tuple[tuple[str, int], ...], *, syncing: Syncing
    ) -> str:
        """Ask for `locks` for `task_id`, once this worker knows what the group holds; the request's claim.

        While it waits for the group's answers, `syncing` hears who has not answered, at each change.
        Errors: `LockFailed` when the broker does not send the request back within `ECHO_TIMEOUT`,
        or refuses it. Cancellation: the request, if it went out, is withdrawn.
        """
        while True:
            await self._until_ready(syncing)
            link = self.sync.synced_on
            request = LockRequest(new_claim_id(), task_id, self.worker_id, locks, limits)
            self._mine[request.claim] = request
            echo = self._echoes[request.claim] = trio.Event()
            try:
                outcome = await self._confirm(request, echo, link)
            except BaseException:
                await self.release(request.claim)
                raise
            finally:
                del self._echoes[request.claim]
            if outcome == "confirmed":
                return request.claim
            await self.release(request.claim)
            if outcome == "timeout":
                raise LockFailed(f"the broker did not send the lock request back within {ECHO_TIMEOUT:g}s")
            log.info("task %s: its lock request went out as the link changed; asking again", task_id)

    async def _confirm(
        self, request: LockRequest, echo: trio.Event, link: int
    ) -> Literal["confirmed", "timeout", "link"]:
        """Publish `request` and wait for it to come back on link number `link`."""

        async def publish_and_wait() -> None:
            await self.messenger.acquire(request)
            await echo.wait()

        with trio.move_on_after(ECHO_TIMEOUT):
            try:
                finished = await self.session.unless_reconnected(link, publish_and_wait)
            except PublishRefused as exc:
                raise LockFailed(f"the broker refused the lock request: {exc}") from None
            except LinkError:
                finished = False
            # Sent back on a later link, it may come after requests this worker has not heard.
            return "confirmed" if finished and self.session.connections == link else "link"
        return "timeout"

    async def _until_ready(self, syncing: Syncing) -> None:
        """Until this worker's current link is synced; `syncing` hears who has not answered, at each change."""
        shown: list[str] | None = None
        while not self._ready():
            changed = self._changed
            missing = self.missing()
            if missing != shown:
                shown = missing
                syncing(missing)
            with trio.move_on_after(SYNC_LOOK_EVERY):
                await changed.wait()

    async def wait_granted(self, claim: str, *, waiting: Callable[[list[LockRequest]], None], syncing: Syncing) -> None:
        """Until no request before `claim` stands in its way; `waiting` hears who does, at each change.

        After a new link, it waits first for the group's answers (`syncing` hears who has not answered).
        Errors: `LockFailed` when the request is gone from the book (taken over, or lapsed unrenewed).
        Cancellation: the request stays; `release` it.
        """
        shown: list[LockRequest] | None = None
        while True:
            if not self._ready():
                await self._until_ready(syncing)
                shown = None
            changed = self._changed
            now = self._look()
            if not self.book.holds(claim, now=now):
                raise LockFailed("the lock request lapsed, or its job was taken over, before it was granted")
            blockers = self.book.blockers(claim, now=now)
            if not blockers:
                return
            if blockers != shown:
                shown = blockers
                waiting(blockers)
            # A request may also lapse unannounced (the safety net): look again now and then.
            with trio.move_on_after(self.lapse / RENEWALS_PER_LAPSE):
                await changed.wait()

    async def release(self, claim: str) -> None:
        """Give back the request `claim`; shielded and bounded, it goes out even as its job is cancelled.

        A release the broker did not take in time is sent again until it does.
        """
        self._mine.pop(claim, None)
        self.releases.add(claim, now=trio.current_time())
        problem = f"not taken by the broker within {RELEASE_TIMEOUT:g}s"
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT):
            try:
                await self.messenger.release([claim])
            except Exception as exc:
                problem = str(exc)
            else:
                self.releases.sent([claim])
                return
        log.warning("could not release a lock request now (it is sent again): %s", problem)
