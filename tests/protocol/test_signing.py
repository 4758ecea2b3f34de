"""Signatures on their own, and the intake's checks of a signed task: what each accepts, and why it refuses the rest."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ansible_worker.protocol.claims import request_digest
from ansible_worker.protocol.signing import (
    SignatureRefused,
    Signer,
    TrustedKeys,
    check_age,
    load_private_key,
    signed_bytes,
)
from ansible_worker.worker.intake import Accepted, Dropped, Rejected, read_cancel_message, read_task_message
from tests.protocol.conftest import trusted

TASKS = "ansible/web/tasks"
JOB = {"task_id": "deploy-1", "playbook": "site.yml", "inventory": "hosts", "extra_vars": {"version": "1.2"}}


def signer(keys: dict[str, Path], name: str) -> Signer:
    return Signer.from_file(keys[name].with_suffix(".key"))


def refusal(keys: dict[str, Path], topic: str, document: dict[str, Any]) -> str:
    with pytest.raises(SignatureRefused) as caught:
        trusted(keys).verify(topic, document)
    return str(caught.value)


def test_a_signed_job_verifies_and_names_its_signer(keys: dict[str, Path]) -> None:
    now = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    document = json.loads(json.dumps(signer(keys, "alice").sign(TASKS, JOB, now=now)))
    verified = trusted(keys).verify(TASKS, document)
    assert verified.signer == "alice"
    assert verified.issued_at == now
    assert document["issued_at"] == "2026-11-23T05:00:00.000Z"


def test_key_order_and_spacing_do_not_matter_but_every_value_does(keys: dict[str, Path]) -> None:
    document = signer(keys, "alice").sign(TASKS, JOB)
    reordered = json.loads(json.dumps(dict(reversed(list(document.items()))), indent=3))
    trusted(keys).verify(TASKS, reordered)
    tampered = {**document, "extra_vars": {"version": "6.6"}}
    assert refusal(keys, TASKS, tampered) == "bad signature: it does not match the message (key 'alice')"
    added = {**document, "limit": "all"}
    assert refusal(keys, TASKS, added).startswith("bad signature")


def test_what_is_refused_and_why(keys: dict[str, Path]) -> None:
    alice = signer(keys, "alice")
    document = alice.sign(TASKS, JOB)
    assert refusal(keys, TASKS, JOB) == (
        "unsigned: this worker requires signed messages (security.require_signed_tasks)"
    )
    mallory = signer(keys, "mallory")
    assert refusal(keys, TASKS, mallory.sign(TASKS, JOB)) == (
        f"signed with a key this worker does not trust (fingerprint {mallory.fingerprint})"
    )
    # Signed for another group: the topic is part of what is signed.
    assert refusal(keys, TASKS, alice.sign("ansible/db/tasks", JOB)).startswith("bad signature")
    # A signed job replayed as a cancel request (or the other way round) does not verify.
    assert refusal(keys, TASKS + "/deploy-1/cancel", document).startswith("bad signature")
    no_hint = {**document, "signature": {"value": document["signature"]["value"]}}
    assert trusted(keys).verify(TASKS, no_hint).signer == "alice"
    forged = {**document, "signature": {"value": mallory.sign(TASKS, JOB)["signature"]["value"]}}
    assert refusal(keys, TASKS, forged) == "bad signature: no trusted key made it"
    assert refusal(keys, TASKS, {**document, "signature": "abc"}).startswith("malformed signature")
    bad_base64 = {**document, "signature": {"key": alice.fingerprint, "value": "***"}}
    assert refusal(keys, TASKS, bad_base64) == "malformed signature: value is not base64"
    without_time = {key: value for key, value in JOB.items()}
    without_time = alice.sign(TASKS, without_time)
    del without_time["issued_at"]
    assert refusal(keys, TASKS, without_time).startswith("bad signature")


def verify_text(keys: dict[str, Path], text: str) -> str | None:
    """Why the message `text` is refused as a worker decodes it, or None when it verifies."""
    try:
        trusted(keys).verify(TASKS, json.loads(text))
    except SignatureRefused as exc:
        return str(exc)
    return None


def test_a_verified_message_is_read_as_its_signature_covers_it(keys: dict[str, Path]) -> None:
    """Texts that decode to other values with one RFC 8785 form run with the values that form stands for."""
    alice = signer(keys, "alice")
    extra_vars = {"version": 2, "offset": 0, "ratio": 0.5, "name": "caf\u00e9", "list": [1, 2]}
    text = json.dumps(alice.sign(TASKS, {**JOB, "extra_vars": extra_vars}))

    def check(document: Any) -> Any:
        return trusted(keys).verify(TASKS, document)

    rewrites = [
        ("version", "2.0"),
        ("version", "2.0e0"),
        ("version", "20e-1"),
        ("offset", "-0.0"),
        ("list", "[1, 2.0]"),
    ]
    for name, value in rewrites:
        rewritten = re.sub(rf'"{name}": (\[[^]]*\]|[^,}}]+)', f'"{name}": {value}', text, count=1)
        assert f'"{name}": {value}' in rewritten
        match read_task_message(rewritten.encode(), max_bytes=4096, verify=check):
            case Accepted(job, signed, payload) if signed is not None and payload is not None:
                assert job.extra_vars == extra_vars
                assert [type(job.extra_vars[key]) for key in ("version", "offset")] == [int, int]
                assert type(job.extra_vars["list"][1]) is int
                # What the worker keeps and hands back is the job as signed, and verifies as such.
                assert json.loads(payload)["extra_vars"] == extra_vars
                assert check(json.loads(payload)).signer == "alice"
            case other:
                pytest.fail(f"{value}: not accepted: {other}")
    # Nothing rides along in the signature object, which its signature does not cover.
    padded = json.loads(text)
    padded["signature"]["extra"] = "x" * 1000
    kept = check(padded)
    assert kept.document["signature"] == {key: padded["signature"][key] for key in ("key", "value")}
    assert b"xxx" not in kept.payload()
    # The same values written otherwise: escapes, exponents of a fraction, spacing, order, a duplicate key
    # (the decoder keeps the last one, and what it keeps is both what is checked and what runs).
    same = text.replace('"ratio": 0.5', '"ratio": 5e-1').replace("caf\\u00e9", "café")
    same = same.replace('"playbook": "site.yml"', '"playbook": "other.yml", "playbook": "site.yml"')
    assert same != text
    assert verify_text(keys, same) is None
    changed = text.replace('"playbook": "site.yml"', '"playbook": "site.yml", "playbook": "other.yml"')
    assert (verify_text(keys, changed) or "").startswith("bad signature")
    # Unicode is compared as code points: another normal form is another message.
    decomposed = text.replace("caf\\u00e9", "cafe\\u0301")
    assert decomposed != text
    assert (verify_text(keys, decomposed) or "").startswith("bad signature")


def test_a_job_that_grows_past_the_limit_as_signed_is_refused(keys: dict[str, Path]) -> None:
    """Numbers written out in full can make the job as signed longer than the message that came."""
    alice = signer(keys, "alice")
    signed = alice.sign(TASKS, {**JOB, "extra_vars": {f"n{i}": 9 * 10**15 for i in range(40)}})
    short = json.dumps(signed, separators=(",", ":")).replace("9000000000000000", "9e15").encode()
    check = trusted(keys).verify
    limit = len(short) + 100
    match read_task_message(short, max_bytes=limit, verify=lambda document: check(TASKS, document)):
        case Rejected("deploy-1", reason):
            assert reason == f"message too large as signed ({len(short) + 40 * 12} bytes, max {limit})"
        case other:
            pytest.fail(f"not refused: {other}")


def test_values_with_no_canonical_form_are_refused_and_signed_values_come_back_canonical(
    keys: dict[str, Path],
) -> None:
    alice = signer(keys, "alice")
    signed = alice.sign(TASKS, {**JOB, "extra_vars": {"version": 2.0, "offset": -0.0, "ratio": 0.25, "huge": 1e300}})
    assert signed["extra_vars"] == {"version": 2, "offset": 0, "ratio": 0.25, "huge": 1e300}
    types = {name: type(value) for name, value in signed["extra_vars"].items()}
    assert types == {"version": int, "offset": int, "ratio": float, "huge": float}
    assert verify_text(keys, json.dumps(signed)) is None
    # A whole float from 2**53 up would be written as an integer beyond 2**53, which has no form either.
    for value in (2**53, -(2**53), float("nan"), float("inf"), "\ud800", 1e16):
        with pytest.raises(SignatureRefused, match=r"^the message has no canonical JSON form \(RFC 8785\)"):
            alice.sign(TASKS, {**JOB, "extra_vars": {"x": value}})
    document = alice.sign(TASKS, JOB)
    for text in ('{"x": NaN}', '{"x": Infinity}', '{"x": 1e400}', '{"x": 9007199254740993}', '{"x": "\\ud800"}'):
        forged = {**document, "extra_vars": json.loads(text)}
        assert refusal(keys, TASKS, forged).startswith("the message has no canonical JSON form"), text
    # Signed by another implementation over the canonical form of 1e16: a signature that
    # matches, for values that the worker could never hand on as signed.
    big = {**JOB, "extra_vars": {"n": 1e16}, "issued_at": document["issued_at"]}
    key = load_private_key(keys["alice"].with_suffix(".key"))
    value = base64.b64encode(key.sign(signed_bytes(TASKS, big))).decode()
    foreign = {**big, "signature": {"key": alice.fingerprint, "value": value}}
    assert refusal(keys, TASKS, foreign).startswith("the message has no canonical JSON form (RFC 8785)")
    nested: dict[str, Any] = {}
    for _ in range(5000):
        nested = {"x": nested}
    assert refusal(keys, TASKS, {**document, "extra_vars": nested}) == (
        "the message has no canonical JSON form (RFC 8785): nested too deeply"
    )


def test_age_and_clock_skew() -> None:
    now = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    check_age(now - timedelta(seconds=299), now=now, max_age=300, max_skew=60)
    check_age(now + timedelta(seconds=59), now=now, max_age=300, max_skew=60)
    with pytest.raises(SignatureRefused, match=r"^expired: issued 400s ago, more than security.max_task_age \(300s\)"):
        check_age(now - timedelta(seconds=400), now=now, max_age=300, max_skew=60)
    with pytest.raises(SignatureRefused, match=r"^issued 90s in the future"):
        check_age(now + timedelta(seconds=90), now=now, max_age=300, max_skew=60)


def test_intake_rejects_before_reading_fields_and_keeps_the_signer(keys: dict[str, Path]) -> None:
    verify = trusted(keys).verify

    def check(document: Any) -> Any:
        return verify(TASKS, document)

    good = json.dumps(signer(keys, "alice").sign(TASKS, JOB)).encode()
    match read_task_message(good, max_bytes=4096, verify=check):
        case Accepted(job, signed):
            assert job.task_id == "deploy-1"
            assert signed is not None
            assert signed.signer == "alice"
        case other:
            pytest.fail(f"not accepted: {other}")
    unsigned = json.dumps({"task_id": "x", "forks": "not even valid"}).encode()
    assert read_task_message(unsigned, max_bytes=4096, verify=check) == Rejected(
        "x", "unsigned: this worker requires signed messages (security.require_signed_tasks)"
    )
    assert isinstance(read_cancel_message(b"", max_bytes=4096, verify=check), Dropped)
    assert isinstance(read_cancel_message(b'{"reason": "r"}', max_bytes=4096, verify=check), Dropped)


def test_the_cheap_checks_come_before_the_signature_is_computed(keys: dict[str, Path]) -> None:
    """A flood of stale or foreign messages costs no canonical JSON: that is refused first."""
    from ansible_worker.ops.security_settings import SecuritySettings
    from ansible_worker.protocol.topics import Topics
    from ansible_worker.worker.policies import SignaturePolicy
    from ansible_worker.worker.task_gate import SignedTaskGate

    trusted = TrustedKeys.from_files({"alice": keys["alice"].with_suffix(".pub")})
    defaults = SecuritySettings()
    alice = Signer.from_file(keys["alice"].with_suffix(".key"))
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    expired = alice.sign(TASKS, JOB, now=long_ago)
    # An integer beyond 2**53 has no canonical form: reaching it would say so.
    expired["extra_vars"] = {"big": 2**60}
    foreign = {**expired, "signature": {"key": "ff" * 16, "value": "AAAA"}}

    def reason(released: bytes | None, document: dict[str, Any]) -> str:
        """Why the gate refuses `document`, while a live release names the message `released`."""
        digest = request_digest(released) if released is not None else None
        policy = SignaturePolicy(trusted, max_age=defaults.max_task_age, max_skew=defaults.max_clock_skew)
        gate = SignedTaskGate(policy, Topics("ansible", "web"), released=lambda _: digest)
        with pytest.raises(SignatureRefused) as refused:
            gate.task_verifier(json.dumps(document).encode())(document)
        return str(refused.value)

    assert reason(None, expired).startswith("expired: issued 3600s ago")
    assert reason(None, foreign).startswith("signed with a key this worker does not trust")
    # Handed back by the group as this very message, it skips the age check; only then is the
    # signature computed.
    assert reason(json.dumps(expired).encode(), expired).startswith("the message has no canonical JSON form")
    # A release names one message: any other for the same task_id is as old as it is.
    other = alice.sign(TASKS, {**JOB, "limit": "web"}, now=long_ago)
    assert reason(json.dumps(other).encode(), expired).startswith("expired: issued 3600s ago")


def test_a_cancel_request_is_bounded_before_it_is_read() -> None:
    huge = json.dumps({"reason": "x" * 20_000}).encode()
    assert read_cancel_message(huge, max_bytes=16_384) == Dropped(f"message too large ({len(huge)} bytes, max 16384)")
    assert read_cancel_message(b'{"reason": "fine"}', max_bytes=16_384) != Dropped("")
