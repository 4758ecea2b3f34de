"""Run a finished job again: its request under a new task_id, on every host or only on those that failed.

Shared by `ansible-worker relaunch` (the request from the job's record) and the dashboard's
run-again buttons (the request as the dashboard heard it). With a signing key, the same rules
hold for both: only a request this key signed is signed again, and only if it was not too old
when it was heard.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ansible_worker.controller.client import Client

SIGNATURE_FIELDS = ("signature", "issued_at")
# The workers' defaults of security.max_task_age and max_clock_skew.
DEFAULT_MAX_TASK_AGE = 300.0
DEFAULT_MAX_CLOCK_SKEW = 60.0


class RelaunchError(Exception):
    """The job cannot be run again; the message says why."""


def failed_hosts(record: Mapping[str, Any]) -> list[str]:
    """The hosts that ended failed or unreachable, from a record: its attempts, else its recap.

    Errors: `RelaunchError` when the record holds neither (cut before the recap, or Ansible
    stopped before it ran any host).
    """
    status = record.get("status")
    attempts = status.get("attempts") if isinstance(status, Mapping) else None
    if isinstance(attempts, list) and attempts:
        bad: set[str] = set()
        for attempt in attempts:
            if isinstance(attempt, Mapping):
                bad.difference_update(_names(attempt.get("hosts")))
                bad.update(_names(attempt.get("failed")), _names(attempt.get("unreachable")))
        return sorted(bad)
    events = record.get("events")
    recaps = [
        event["hosts"]
        for event in events or []
        if isinstance(event, Mapping)
        and event.get("event") == "playbook_on_stats"
        and isinstance(event.get("hosts"), Mapping)
    ]
    if not recaps:
        raise RelaunchError("its record holds no recap of which hosts failed")
    recap = recaps[-1]
    return sorted(
        str(host)
        for host, numbers in recap.items()
        if isinstance(numbers, Mapping)
        and (_positive(numbers.get("failures")) or _positive(numbers.get("unreachable")))
    )


def relaunch_request(original: Mapping[str, Any], *, only_hosts: list[str] | None = None) -> dict[str, Any]:
    """The request to publish: `original` without its signature, a new task_id, and with `only_hosts` as its limit."""
    job = {key: value for key, value in original.items() if key not in SIGNATURE_FIELDS}
    job["task_id"] = f"job-{uuid.uuid4().hex[:12]}"
    if only_hosts is not None:
        if not only_hosts:
            raise RelaunchError("no host failed or was unreachable")
        # The failed hosts by name; any limit of the original only chose among them already.
        job["limit"] = ",".join(only_hosts)
    return job


def not_ours(original: Mapping[str, Any], client: Client, *, key: str = "this signing key") -> str | None:
    """Why a request must not be signed again by this client's key (named `key` in the answer), or None.

    Anyone who may publish on the tasks topic can send a copy of a job with other fields;
    signing it again would lend the key to them. So with a signing key, only a request signed
    by that same key is run again.
    """
    signer = client.signer
    if signer is None:
        return None
    from ansible_worker.protocol.signing import SignatureRefused, TrustedKeys

    try:
        TrustedKeys({"controller": signer.public_key}).verify(client.topics.tasks, dict(original))
    except SignatureRefused as exc:
        return f"its request is not signed by {key} ({exc}); it is not signed again"
    return None


def too_old(
    original: Mapping[str, Any],
    client: Client,
    *,
    heard: datetime | None,
    by: str = "it was heard",
    max_age: float = DEFAULT_MAX_TASK_AGE,
    max_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> str | None:
    """Why a request this key signed was too old to run when it was `heard` (None: now), or None.

    The workers' own rule, applied when the request arrived: a copy of one signed long ago,
    replayed, is not made new by a fresh signature. Not applied at the time of the relaunch:
    relaunching is for jobs that have ended, often long after `max_age`.
    """
    if client.signer is None:
        return None
    from ansible_worker.protocol.signing import SignatureRefused, check_age, issued_at

    try:
        check_age(issued_at(dict(original)), now=heard or datetime.now(UTC), max_age=max_age, max_skew=max_skew)
    except SignatureRefused as exc:
        return f"its request was too old to run when {by} ({exc}); it is not signed again"
    return None


def _names(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _positive(value: object) -> bool:
    return isinstance(value, int) and value > 0
