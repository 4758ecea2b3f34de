"""The group's record of which worker holds which task_id: claim messages, and the book that reads them.

Before a worker queues a job it publishes a claim on `<prefix>/<group>/tasks/<task_id>/claim`
(retained, with an expiry). Every worker of the group subscribes to the claims and records
them in the order the broker delivers them, which is the same order for everyone on one
broker: the first claim heard for a task_id holds it, and a worker that hears another
worker's claim before its own stands back. A request for a held task_id is a duplicate (or,
signed, a replay). A worker that hands a queued job back to the group publishes a release
naming the claim it releases, so that the next worker may claim the task again, and the
SHA-256 of the request it publishes again (`request_sha256`): with signed jobs, that request
alone is taken however old it is while the release is valid.

A claim also says what a worker that takes the job over needs: when the group first accepted
the job (`accepted_at`, kept by every later claim on it), the SHA-256 of the request copy
retained for it (`request_sha256`), and, once the job may have started, `started_at`. A
takeover claim, made by a survivor for a lost worker's job, names the claim it takes over
(`takes_over`) and the lost worker (`lost_worker`): it counts only when it names the claim
that holds the job (or the job is free), and the claim it takes over never holds again. So
of several survivors the first heard takes over, and the others stand back.

With signed jobs every claim and release is signed by a worker key the group trusts, and
says until when it holds (`expires_at`, inside the signature): nothing else on the claim
topic can make a worker forget, release or extend a claim. A claim once released never
holds again, and an empty payload (a cleared retained message) changes nothing.

This module is pure: it reads messages and answers questions about what was heard.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.timestamps import format_utc, parse_utc

__all__ = [
    "MAX_CLAIM_BYTES",
    "Claim",
    "ClaimBook",
    "ClaimState",
    "claim_document",
    "new_claim_id",
    "read_claim",
    "request_digest",
]

ClaimState = Literal["claimed", "released"]

# A genuine claim is about 400 bytes, signed; anything far larger is not one.
MAX_CLAIM_BYTES = 4096
PRUNE_EVERY = 60.0
# Tasks remembered at once. Far above what a group's genuine jobs reach within a claim's
# lifetime; past it, the one heard longest ago is forgotten first (and logged). With signed
# jobs only a trusted worker key can add to the book, so no one else can push a claim out.
MAX_CLAIMS = 100_000
MAX_RELEASES_PER_TASK = 32
_SHA256 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim or release as heard from the broker; `expires` is on the caller's clock.

    `raw` is the message as it arrived, so that a worker can publish it again as it was.
    `request_sha256` is, for a release, the digest of the request it hands back (None when
    it names none: a claim given up, or a release from an older worker); for a claim, the
    digest of the request copy retained for the job. `accepted_at` is when the group first
    accepted the job, `started_at` set once the job may have started, and `takes_over` and
    `lost_worker` name, for a takeover, the claim and the worker it takes the job from.
    """

    worker_id: str
    claim_id: str
    state: ClaimState
    expires: float
    releases: str | None = None
    raw: bytes = b""
    request_sha256: str | None = None
    accepted_at: datetime | None = None
    started_at: datetime | None = None
    takes_over: str | None = None
    lost_worker: str | None = None

    @property
    def handed_back(self) -> str | None:
        """For a release that hands a job back, the digest of the request it names; else None."""
        return self.request_sha256 if self.state == "released" else None


def new_claim_id() -> str:
    """A fresh random claim id (16 hex digits), naming one claim of one worker."""
    return secrets.token_hex(8)


def request_digest(payload: bytes) -> str:
    """The SHA-256 (lowercase hex) of a task message as published: how a release names it."""
    return hashlib.sha256(payload).hexdigest()


def claim_document(
    worker_id: str,
    claim_id: str,
    state: ClaimState,
    *,
    expires_at: datetime | None,
    releases: str | None = None,
    request_sha256: str | None = None,
    accepted_at: datetime | None = None,
    started_at: datetime | None = None,
    takes_over: str | None = None,
    lost_worker: str | None = None,
) -> dict[str, Any]:
    """The JSON object of a claim or release (signed by the caller when signatures are on)."""
    document: dict[str, Any] = {"state": state, "worker_id": worker_id, "claim": claim_id}
    if releases is not None:
        document["releases"] = releases
    if request_sha256 is not None:
        document["request_sha256"] = request_sha256
    if accepted_at is not None:
        document["accepted_at"] = format_utc(accepted_at, timespec="milliseconds")
    if started_at is not None:
        document["started_at"] = format_utc(started_at, timespec="milliseconds")
    if takes_over is not None:
        document["takes_over"] = takes_over
    if lost_worker is not None:
        document["lost_worker"] = lost_worker
    if expires_at is not None:
        document["expires_at"] = format_utc(expires_at, timespec="milliseconds")
    return document


def read_claim(
    payload: bytes,
    *,
    now: float,
    wall_now: datetime,
    verify: Callable[[Mapping[str, Any]], object] | None,
    expiry: int | None,
    default_lifetime: float | None,
) -> Claim | None:
    """The claim or release in one message, or None for anything else (logged at debug level).

    With `verify` (signed jobs), a claim must carry `expires_at` in the future and a
    signature `verify` accepts; the cheap checks run first, so noise costs no canonical
    JSON. Without it, the expiry is `expires_at`, else the message's own, else
    `default_lifetime` (None: for ever).
    """
    document = json_object(payload, max_bytes=MAX_CLAIM_BYTES)
    if document is None:
        return None
    state, worker_id, claim_id = document.get("state"), document.get("worker_id"), document.get("claim")
    releases = document.get("releases")
    if state not in ("claimed", "released") or not isinstance(worker_id, str) or not isinstance(claim_id, str):
        return None
    if state == "released" and not isinstance(releases, str):
        return None
    if releases is not None and not isinstance(releases, str):
        return None
    until = _moment(document.get("expires_at"))
    if until is not None:
        expires = now + (until - wall_now).total_seconds()
        if expires <= now:
            return None
    elif verify is not None:
        return None
    else:
        expires = now + (expiry if expiry else default_lifetime if default_lifetime is not None else float("inf"))
    if verify is not None:
        from ansible_worker.protocol.signing import SignatureRefused

        try:
            verify(document)
        except SignatureRefused as exc:
            log.debug("ignoring a claim message: %s", exc)
            return None
    return _claim_of(document, payload, state, expires)


def _claim_of(document: Mapping[str, Any], payload: bytes, state: ClaimState, expires: float) -> Claim | None:
    """The `Claim` a checked message holds, with the takeover fields it carries; None for a malformed takeover."""
    request = document.get("request_sha256")
    digest = request if isinstance(request, str) and _SHA256.fullmatch(request) else None
    takes_over, lost_worker = document.get("takes_over"), document.get("lost_worker")
    if state == "claimed" and takes_over is not None:
        if not isinstance(takes_over, str) or not isinstance(lost_worker, str):
            # A takeover must say whose claim it ends and whom it takes the job from.
            return None
    else:
        takes_over = lost_worker = None
    return Claim(
        document["worker_id"],
        document["claim"],
        state,
        expires,
        document.get("releases"),
        payload,
        digest,
        accepted_at=_moment(document.get("accepted_at")),
        started_at=_moment(document.get("started_at")) if state == "claimed" else None,
        takes_over=takes_over,
        lost_worker=lost_worker,
    )


def _newer_copy(held: Claim, heard: Claim) -> Claim:
    """Of two copies of one claim (one claim id), the one that says what holds now.

    A claim is unsettled while it names a request copy, and settled once its worker publishes
    it again without one, which it does only after the job's terminal status reached the
    broker: a settled copy then says how long the claim holds, even if sooner than before,
    and an unsettled copy heard after it (an older message) changes nothing. Otherwise the
    copy that holds longer counts: an older copy does not shorten what is known.
    """
    if held.request_sha256 is not None and heard.request_sha256 is None:
        return heard
    if held.request_sha256 is None and heard.request_sha256 is not None:
        return held
    return held if held.expires > heard.expires else heard


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


@dataclass(slots=True)
class _Entry:
    holder: Claim | None = None
    release: Claim | None = None
    # Claims released for this task: never a holder again, whatever arrives later.
    released: set[str] = field(default_factory=set)
    # Until when what the entry knows besides its holder (releases, claims released) matters.
    floor: float = 0.0
    expires: float = 0.0
    # The newest message of the claim the last takeover ended, as it held until then.
    taken: Claim | None = None


class ClaimBook:
    """What the group's claims say, task by task, until they expire."""

    def __init__(self, *, max_claims: int = MAX_CLAIMS, on_forget: Callable[[str], object] | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._next_prune = 0.0
        self._max_claims = max_claims
        self._evicted = 0
        # Told of each task_id the book forgets (expired, or evicted), so that what is kept
        # beside it goes too.
        self._on_forget = on_forget or (lambda task_id: None)

    def __len__(self) -> int:
        return len(self._entries)

    def live(self, *, now: float) -> int:
        """How many task_ids a live claim or release speaks for now (the expired ones are forgotten first)."""
        self._next_prune = 0.0
        self._prune(now)
        return len(self._entries)

    def record(self, task_id: str, claim: Claim, *, now: float) -> bool:
        """Record one claim or release heard for `task_id`, in delivery order; True if it counted.

        A claim counts when nobody holds the task (or holds it with this very claim, heard
        again) and it was never released. A takeover claim counts, as well, when it names the
        holder's claim, which then never holds again: a release and a claim in one. A release
        counts when it names the holder's claim, or when nothing holds the task here (a worker
        that never heard the claim).
        """
        self._prune(now)
        entry = self._live(task_id, now)
        if entry is None:
            if len(self._entries) >= self._max_claims:
                self._evict_oldest()
            entry = self._entries[task_id] = _Entry()
        holder = self._holder_of(entry, now)
        if claim.state == "claimed":
            if claim.claim_id in entry.released:
                return False
            taken = claim.takes_over
            if holder is not None and holder.claim_id not in (claim.claim_id, taken):
                return False
            if taken is not None and taken != claim.claim_id:
                if taken not in entry.released and len(entry.released) >= MAX_RELEASES_PER_TASK:
                    return False
                # Taken over: the lost worker's claim, heard again, never holds again.
                entry.released.add(taken)
                if holder is not None and holder.claim_id == taken:
                    entry.floor = max(entry.floor, holder.expires)
                    entry.taken, holder = holder, None
            if holder is not None:
                # The same claim again: `_newer_copy` says which copy tells how long it holds, and
                # a start once heard stays, even when an older copy is published again (a loser
                # restores the retained claim it replaced).
                started = holder.started_at or claim.started_at
                claim = _newer_copy(holder, claim)
                if claim.started_at is None and started is not None:
                    claim = replace(claim, started_at=started)
            entry.holder, entry.release = claim, None
        else:
            assert claim.releases is not None
            if holder is not None and holder.claim_id != claim.releases:
                return False
            if claim.releases not in entry.released and len(entry.released) >= MAX_RELEASES_PER_TASK:
                # A genuine task is handed back a few times; a flood of releases is not.
                return False
            entry.released.add(claim.releases)
            entry.floor = max(entry.floor, claim.expires, holder.expires if holder is not None else 0.0)
            # Only a holder's message is ever published again: keep no copy of a release.
            entry.holder, entry.release = None, replace(claim, raw=b"")
        # A settled holder may shorten the entry's life; nothing else it knows is forgotten sooner.
        entry.expires = max(entry.floor, entry.holder.expires if entry.holder is not None else 0.0)
        return True

    def holder(self, task_id: str, *, now: float) -> Claim | None:
        """The live claim on `task_id`, if a worker of the group holds it."""
        entry = self._live(task_id, now)
        return None if entry is None else self._holder_of(entry, now)

    def taken_over(self, task_id: str, claim_id: str, *, now: float) -> Claim | None:
        """The claim `claim_id` as its newest message said when a takeover ended it, if one did."""
        entry = self._live(task_id, now)
        taken = entry.taken if entry is not None else None
        return taken if taken is not None and taken.claim_id == claim_id else None

    def released(self, task_id: str, *, now: float) -> bool:
        """Whether a worker handed `task_id` back to the group and nobody has claimed it since."""
        return self._release(task_id, now) is not None

    def released_request(self, task_id: str, *, now: float) -> str | None:
        """The digest of the request a live release of `task_id` hands back, if it names one."""
        release = self._release(task_id, now)
        return release.handed_back if release is not None else None

    def release(self, task_id: str, *, now: float) -> Claim | None:
        """The live release of `task_id` that nobody has claimed since, if any."""
        return self._release(task_id, now)

    def _release(self, task_id: str, now: float) -> Claim | None:
        entry = self._live(task_id, now)
        if entry is None or self._holder_of(entry, now) is not None:
            return None
        release = entry.release
        return release if release is not None and release.expires > now else None

    @staticmethod
    def _holder_of(entry: _Entry, now: float) -> Claim | None:
        holder = entry.holder
        return holder if holder is not None and holder.expires > now else None

    def _live(self, task_id: str, now: float) -> _Entry | None:
        entry = self._entries.get(task_id)
        if entry is not None and entry.expires <= now:
            self._forget(task_id)
            return None
        return entry

    def _forget(self, task_id: str) -> None:
        del self._entries[task_id]
        self._on_forget(task_id)

    def _evict_oldest(self) -> None:
        # Insertion order: the first entry is the task heard of longest ago (expired ones
        # are pruned every PRUNE_EVERY seconds anyway).
        self._forget(next(iter(self._entries)))
        self._evicted += 1
        if self._evicted == 1 or self._evicted % 10_000 == 0:
            log.warning(
                "more than %d live claims: forgetting the oldest (%d so far); a flood of claim messages?",
                self._max_claims,
                self._evicted,
            )

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        for task_id in [task_id for task_id, entry in self._entries.items() if entry.expires <= now]:
            self._forget(task_id)
