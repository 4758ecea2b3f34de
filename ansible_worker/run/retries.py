"""Which hosts a job runs again (`retry`), what each attempt is reported as, and how the job ends after them. No I/O."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from ansible_worker.protocol.models import Attempt, State


def attempt_summary(
    number: int, limit: str | None, return_code: int | None, recap: Mapping[str, Mapping[str, int]]
) -> Attempt:
    """One attempt as the status shows it, from its recap (Ansible's numbers by host)."""
    return Attempt(
        attempt=number,
        limit=limit,
        return_code=return_code,
        hosts=sorted(recap),
        failed=sorted(host for host, numbers in recap.items() if numbers.get("failures", 0) > 0),
        unreachable=sorted(host for host, numbers in recap.items() if numbers.get("unreachable", 0) > 0),
    )


def hosts_to_retry(attempt: Attempt, on: Collection[str]) -> list[str]:
    """The hosts of `attempt` that ended in one of the `on` states, in order."""
    hosts = set()
    if "failed" in on:
        hosts.update(attempt.failed)
    if "unreachable" in on:
        hosts.update(attempt.unreachable)
    return sorted(hosts)


def still_bad(attempts: Sequence[Attempt]) -> list[str]:
    """The hosts whose last attempt left them failed or unreachable."""
    bad: set[str] = set()
    for attempt in attempts:
        bad.difference_update(attempt.hosts)
        bad.update(attempt.failed, attempt.unreachable)
    return sorted(bad)


def final_verdict(
    last: tuple[State, str | None], first_error: str | None, attempts: Sequence[Attempt]
) -> tuple[State, str | None]:
    """How a job with several attempts ends: the last attempt's verdict, unless it succeeded on hosts run
    again while hosts it did not run (failed where only unreachable ones run again, say) still stand failed."""
    if last[0] is not State.SUCCESS or len(attempts) < 2:
        return last
    bad = still_bad(attempts)
    if not bad:
        return last
    return State.FAILED, first_error or f"hosts {', '.join(bad)} ended failed or unreachable"


def limit_of(hosts: Sequence[str]) -> str:
    """A `limit` naming exactly these hosts (Ansible reads a trailing comma as a list of names)."""
    return ",".join(hosts)
