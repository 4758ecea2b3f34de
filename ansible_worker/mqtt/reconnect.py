"""When a broker session connects again: one backoff for every session, and each owner's rule for giving up."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

from ansible_worker.mqtt.options import ConnectFailed, LinkError, LinkLost

log = logging.getLogger(__name__)


class GaveUp(LinkLost):
    """The session lost its link and none came up again within its `Reconnect.give_up_after`."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a `BrokerSession` connects again after losing its link, and when it stops trying.

    The wait before the n-th attempt in a row (from 0) is `min(most, first * 2**n)`, jittered
    down to between half and all of it, so that the clients of a restarted broker do not all
    return at one instant. Only a link that stayed up `steady` seconds starts the count, and
    the time to give up, afresh: a broker that accepts and drops at once must not be tried
    ten times a second for ever. The default is the worker's: it never gives up.

    `give_up_after`: seconds after a loss, without a steady link since, after which the
    session ends with `GaveUp` (`math.inf`: never; 0 or less: the loss itself is raised).
    `first_must_connect`: the failure of the very first connection is raised, not retried.
    `retries_level`: the log level of the attempts after the first failed one in a row,
    which is always a warning.
    """

    first: float = 0.5
    most: float = 30.0
    steady: float = 0.0
    give_up_after: float = math.inf
    first_must_connect: bool = False
    retries_level: int = logging.WARNING


# The worker's policy: it waits for its broker for ever.
KEEP_TRYING = Reconnect()


def keep_trying_within(lost_after: float) -> Reconnect:
    """A worker's policy when the group judges it lost after `lost_after` seconds of silence.

    Never a longer wait than `lost_after / 4`: once the broker is back, every worker of the
    group is connected again within that (and the time to connect), so however long the
    outage, the spread of their returns never makes one look lost to another that came back first.
    """
    return Reconnect(most=min(KEEP_TRYING.most, lost_after / 4))


class Backoff:
    """One session's run of failed attempts under a `Reconnect` policy; pure, the time is given."""

    def __init__(self, policy: Reconnect) -> None:
        self.policy = policy
        # Failed attempts since the last steady link.
        self.failures = 0
        self._lost_at: float | None = None
        self._up_since: float | None = None

    def link_up(self, now: float) -> None:
        """A link came up at `now`."""
        self._up_since = now

    def next_wait(self, now: float) -> float | None:
        """The link was lost, or an attempt failed, at `now`: the wait before the next attempt, or None to give up."""
        policy = self.policy
        if self._up_since is not None and now - self._up_since >= policy.steady:
            self.failures, self._lost_at = 0, None
        self._up_since = None
        if self._lost_at is None:
            self._lost_at = now
        if now - self._lost_at >= policy.give_up_after:
            return None
        # The exponent stops growing long before `most` does: 2.0**1024 would not be a float at all.
        wait = min(policy.most, policy.first * 2.0 ** min(self.failures, 64)) * random.uniform(0.5, 1.0)
        self.failures += 1
        return wait

    def wait_after(self, error: LinkError | None, where: str, now: float) -> float:
        """How long to wait after a link to `where` ended at `now` with `error` (None: it closed), logged.

        Errors: `error` itself, or `GaveUp`, when the policy gives up.
        """
        if isinstance(error, ConnectFailed):
            reason = f"cannot connect to broker {where}: {error}"
        elif error is not None:
            reason = f"lost broker {where}: {error}"
        else:
            reason = f"link to broker {where} closed"
        wait = self.next_wait(now)
        if wait is None:
            if error is not None and self.policy.give_up_after <= 0:
                raise error
            last = (str(error) or type(error).__name__) if error is not None else "connection closed"
            raise GaveUp(
                f"lost the broker {where} and could not connect again within {self.policy.give_up_after:g}s: {last}"
            )
        level = logging.WARNING if self.failures == 1 else self.policy.retries_level
        log.log(level, "%s; retrying in %.1fs (attempt %d)", reason, wait, self.failures)
        return wait
