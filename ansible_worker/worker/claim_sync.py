"""Whether this worker has heard every claim the broker ordered before now: lost at each reconnection or freeze.

A worker that was away (its link dropped, or the process was frozen: SIGSTOP, a suspended
VM) may have had its jobs taken over meanwhile. Until it has heard the claims again, it must
publish nothing for its jobs: the status publisher and the claim renewals wait on
`wait_synced`. Synced means that, on the current link, a sync marker published after the
claims' subscription came back, and that no gap longer than `gap` passed in this process
since (the ticks of `serve` measure that, on the monotonic clock).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ansible_worker.mqtt.link import LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession

log = logging.getLogger(__name__)

# Between two ticks that measure this process's own freezes.
TICK = 0.5
# One sync round trip; past it, tried again.
SYNC_TIMEOUT = 10.0


class ClaimSync:
    """Tracks whether the claims are synced on the current link; `serve` syncs them again when they are not.

    `sync` is the round trip (the content fetcher's marker): when it returns, everything the
    broker ordered before it has been heard, the claims' retained messages included.
    """

    def __init__(self, session: BrokerSession, sync: Callable[[], Awaitable[None]], *, gap: float) -> None:
        self.session = session
        self._sync = sync
        self.gap = gap
        self._synced_on: int | None = None
        self._last_tick: float | None = None
        self._changed = trio.Event()
        # Rung whenever the claims are synced again after a reconnection or a freeze.
        self.on_synced: Callable[[], None] = lambda: None

    @property
    def synced(self) -> bool:
        """Whether the claims heard are all the broker has, as far as this process can tell now."""
        self._notice_gap(trio.current_time())
        return self._synced_on is not None and self._synced_on == self.session.connections and self.session.connected

    def resynced_since(self, connection: int) -> bool:
        """Whether the claims were synced on a link after link number `connection`."""
        return self._synced_on is not None and self._synced_on > connection

    async def wait_synced(self) -> None:
        """Wait until the claims are synced. Cancellation: nothing changes."""
        while not self.synced:
            await self._changed.wait()

    async def serve(self) -> None:
        """Tick, and sync the claims again after each reconnection or freeze, for ever.

        Cancellation: nothing to undo.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick)
            while True:
                await self.session.wait_connected()
                if self.synced:
                    await self._wait_change()
                    continue
                connection = self.session.connections
                try:
                    with trio.move_on_after(SYNC_TIMEOUT):
                        await self._sync()
                        if self.session.connections == connection and self.session.connected:
                            self._synced_on = connection
                            log.debug("claims synced on link %d", connection)
                            self._ring()
                            self.on_synced()
                        continue
                    log.warning("the broker did not answer a sync marker within %gs; trying again", SYNC_TIMEOUT)
                except PublishRefused as exc:
                    # Trying again would be refused again: go on without the fence rather than publish nothing.
                    log.error(
                        "cannot tell when the claims are heard again (%s; check the broker's ACL for this worker):"
                        " statuses go out without waiting for them",
                        exc,
                    )
                    self._synced_on = connection
                    self._ring()
                except LinkError as exc:
                    log.debug("claims not synced: %s", exc)
                    await trio.sleep(TICK)

    async def _tick(self) -> None:
        while True:
            now = trio.current_time()
            self._notice_gap(now)
            self._last_tick = now
            await trio.sleep(TICK)

    def _notice_gap(self, now: float) -> None:
        if self._last_tick is not None and now - self._last_tick > self.gap and self._synced_on is not None:
            log.warning(
                "this process was frozen for %.1fs: nothing is published for its jobs until the claims are synced",
                now - self._last_tick,
            )
            self._synced_on = None
            self._last_tick = now
            self._ring()

    async def _wait_change(self) -> None:
        # Wakes on a freeze noticed, or soon after a link change (the session wakes nobody here).
        with trio.move_on_after(TICK):
            await self._changed.wait()

    def _ring(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
