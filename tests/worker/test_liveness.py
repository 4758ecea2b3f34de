"""Who is lost: silence longer than `lost_after` while this worker is connected; nothing else reaps."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ansible_worker.protocol.signing import Signer, TrustedKeys, generate_key_pair
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.liveness import WILL_EXPIRY, Liveness, PresenceHeard, rendezvous, will_age
from ansible_worker.worker.lost_workers import presence_reader

WALL = datetime(2026, 1, 1, tzinfo=UTC)
TOPICS = Topics("p", "g")


def tracker() -> Liveness:
    liveness = Liveness(own_id="me", lost_after=30)
    liveness.connected_at(0)
    return liveness


def test_a_worker_silent_for_longer_than_lost_after_is_lost_and_a_heartbeat_keeps_it_alive() -> None:
    liveness = tracker()
    liveness.heard("a", alive=True, stopped=None, now=1, wall=WALL)
    liveness.heard("b", alive=True, stopped=None, now=1, wall=WALL)
    for moment in range(2, 60):
        liveness.tick(moment)
        if moment % 10 == 0:
            liveness.heard("b", alive=True, stopped=None, now=moment, wall=WALL)
    assert liveness.lost(31) == []
    assert liveness.lost(32) == ["a"]
    assert liveness.alive(59) == ["b", "me"]
    assert liveness.seen("a") is not None
    assert not liveness.is_lost("me", 1000)


def test_the_will_is_no_sign_of_life_and_no_verdict() -> None:
    liveness = tracker()
    liveness.heard("a", alive=True, stopped=None, now=5, wall=WALL)
    liveness.heard("a", alive=False, stopped="lost", now=6, wall=WALL)
    # Offline: no longer a candidate to take jobs over, but not lost before its silence says so.
    assert liveness.alive(7) == ["me"]
    assert not liveness.is_lost("a", 35)
    assert liveness.is_lost("a", 36)


def test_a_will_the_broker_published_more_than_lost_after_ago_counts_as_gone_for_locks() -> None:
    liveness = tracker()
    liveness.heard("fresh", alive=False, stopped="lost", now=5, wall=WALL, will_age=29)
    liveness.heard("old", alive=False, stopped="lost", now=5, wall=WALL, will_age=31)
    liveness.heard("unsaid", alive=False, stopped="lost", now=5, wall=WALL)
    assert liveness.not_gone(6) == ["fresh", "unsaid"]
    # Only for locks: the takeover still waits for the silence.
    assert not liveness.is_lost("old", 6)
    # Back, it is a worker like any other.
    liveness.heard("old", alive=True, stopped=None, now=7, wall=WALL)
    assert liveness.not_gone(8) == ["fresh", "old", "unsaid"]
    assert will_age(WILL_EXPIRY - 40) == 40
    assert will_age(None) is None
    assert will_age(WILL_EXPIRY + 1) is None


def test_a_worker_whose_will_went_out_may_hold_locks_until_lost_and_a_clean_stop_holds_none() -> None:
    liveness = tracker()
    liveness.heard("willed", alive=True, stopped=None, now=5, wall=WALL)
    liveness.heard("willed", alive=False, stopped="lost", now=6, wall=WALL)
    liveness.heard("drained", alive=True, stopped=None, now=5, wall=WALL)
    liveness.heard("drained", alive=False, stopped="clean", now=6, wall=WALL)
    liveness.heard("busy", alive=True, stopped=None, now=5, wall=WALL)
    # A new worker waits to hear what these hold before it asks for locks.
    assert liveness.not_gone(7) == ["busy", "willed"]
    assert liveness.not_gone(36) == []
    # A forged offline changes nothing while the real heartbeats keep coming.
    liveness.heard("a", alive=True, stopped=None, now=30, wall=WALL)
    assert not liveness.is_lost("a", 59)


def test_a_broker_restart_or_the_observers_outage_reaps_nobody() -> None:
    liveness = tracker()
    liveness.heard("a", alive=True, stopped=None, now=1, wall=WALL)
    liveness.disconnected()
    # Away for far longer than lost_after: nothing counts meanwhile.
    assert liveness.lost(100) == []
    assert liveness.silence("a", 100) is None
    liveness.connected_at(100)
    assert liveness.lost(129) == []
    # Still silent a full lost_after after the reconnection: lost.
    assert liveness.lost(131) == ["a"]


def test_the_observers_own_freeze_counts_as_a_reconnection() -> None:
    liveness = tracker()
    liveness.heard("a", alive=True, stopped=None, now=1, wall=WALL)
    liveness.tick(2)
    # Frozen from 2 to 100: what arrived meanwhile is not read yet.
    liveness.tick(100)
    assert liveness.lost(100) == []
    assert liveness.lost(129) == []


def test_a_worker_known_only_by_its_claims_is_judged_from_the_connection() -> None:
    liveness = tracker()
    liveness.know("ghost", 0)
    liveness.know("me", 0)
    assert liveness.lost(30) == []
    assert liveness.lost(31) == ["ghost"]


def test_a_worker_first_known_from_a_claim_long_after_the_connection_is_judged_from_then() -> None:
    liveness = tracker()
    # Connected for an hour; a worker's first claim arrives before its first presence.
    liveness.know("newcomer", 3600)
    assert not liveness.is_lost("newcomer", 3600.1)
    assert liveness.lost(3630) == []
    assert liveness.lost(3631) == ["newcomer"]
    # Known again later: still judged from when it was first known.
    liveness.know("newcomer", 3625)
    assert liveness.is_lost("newcomer", 3631)
    # A reconnection of this worker counts from then, as for every other worker.
    liveness.connected_at(4000)
    assert not liveness.is_lost("newcomer", 4030)


def signed_presences(tmp_path: Path) -> tuple[Callable[[str, bytes], PresenceHeard | None], Signer]:
    generate_key_pair(tmp_path / "w.key", tmp_path / "w.pub")
    trusted = TrustedKeys.from_files({"worker": tmp_path / "w.pub"})
    return presence_reader(trusted, TOPICS), Signer.from_file(tmp_path / "w.key")


def hear(liveness: Liveness, reader: Callable[[str, bytes], PresenceHeard | None], payload: bytes, now: float) -> None:
    heard = reader("a", payload)
    assert heard is not None
    liveness.heard("a", alive=heard.alive, stopped=heard.stopped, now=now, wall=WALL, issued=heard.issued)


def test_a_signed_presence_is_a_sign_of_life_whatever_the_clocks_say(tmp_path: Path) -> None:
    reader, signer = signed_presences(tmp_path)
    liveness = tracker()
    wall = datetime.now(UTC)
    # The worker's clock far ahead of this one's, then stepped far behind: each newer heartbeat counts.
    for now, issued in ((1, wall + timedelta(seconds=61)), (25, wall + timedelta(seconds=62))):
        hear(liveness, reader, presence(signer, issued), now)
    assert not liveness.is_lost("a", 50)
    behind = tracker()
    for now, issued in ((1, wall - timedelta(days=2)), (25, wall - timedelta(days=2, seconds=-20))):
        hear(behind, reader, presence(signer, issued), now)
    assert not behind.is_lost("a", 50)
    assert behind.is_lost("a", 56)


def test_a_replayed_or_repeated_signed_presence_is_no_sign_of_life(tmp_path: Path) -> None:
    reader, signer = signed_presences(tmp_path)
    liveness = tracker()
    wall = datetime.now(UTC)
    older, newest = presence(signer, wall - timedelta(seconds=30)), presence(signer, wall)
    hear(liveness, reader, older, 1)
    hear(liveness, reader, newest, 2)
    # The retained heartbeat heard again, and an older one replayed, keep nobody alive.
    for now in range(10, 40, 5):
        hear(liveness, reader, newest, now)
        hear(liveness, reader, older, now)
    assert liveness.is_lost("a", 33)
    # Gone offline, its next process may sign with a clock set back: its presences count.
    will = json.loads(presence(signer, wall + timedelta(seconds=1)))
    will["state"] = "offline"
    hear(liveness, reader, json.dumps(signer.sign(TOPICS.worker("a"), will, now=wall)).encode(), 40)
    hear(liveness, reader, presence(signer, wall - timedelta(hours=1)), 41)
    assert not liveness.is_lost("a", 70)
    # A forgery says nothing at all.
    forged = json.loads(presence(signer, wall + timedelta(seconds=1)))
    forged["state"] = "draining"
    assert reader("a", json.dumps(forged).encode()) is None
    # Signed for another worker's topic: nothing either.
    assert reader("b", presence(signer, wall + timedelta(seconds=2))) is None


def presence(signer: Signer, issued: datetime) -> bytes:
    return json.dumps(signer.sign(TOPICS.worker("a"), {"worker_id": "a", "state": "online"}, now=issued)).encode()


def test_rendezvous_orders_the_same_everywhere_and_spreads_tasks() -> None:
    workers = ["a", "b", "c"]
    assert rendezvous("t1", workers) == rendezvous("t1", reversed(workers))
    firsts = {rendezvous(f"t{n}", workers)[0] for n in range(50)}
    assert firsts == set(workers)
    # One worker gone moves only its own tasks.
    for n in range(50):
        order = rendezvous(f"t{n}", workers)
        if order[0] != "c":
            assert rendezvous(f"t{n}", ["a", "b"])[0] == order[0]


def test_only_a_presence_the_check_accepts_is_a_sign_of_life() -> None:
    from ansible_worker.protocol.signing import SignatureRefused
    from ansible_worker.worker.liveness import PresenceHeard, read_presence

    online = b'{"state": "online", "worker_id": "a"}'
    will = b'{"state": "offline", "stopped": "lost"}'
    assert read_presence(online, verify=None) == PresenceHeard(True, None)
    assert read_presence(b'{"state": "draining"}', verify=None) == PresenceHeard(True, None)
    assert read_presence(will, verify=None) == PresenceHeard(False, "lost")
    for noise in (b"", b"[]", b"not json", b'{"state": "zombie"}', b" " * 20_000 + online):
        assert read_presence(noise, verify=None) is None

    def refuse(document: object) -> None:
        raise SignatureRefused("unsigned")

    assert read_presence(online, verify=refuse) is None
    assert read_presence(online, verify=lambda document: None) == PresenceHeard(True, None)


def test_ticks_late_under_load_are_no_freeze_even_with_a_short_lost_after() -> None:
    liveness = Liveness(own_id="me", lost_after=2)
    liveness.connected_at(0)
    liveness.heard("a", alive=True, stopped=None, now=0, wall=WALL)
    # A tick every 1.2 s (the look every second, late): a gap past lost_after / 2, and no freeze.
    for step in range(1, 5):
        liveness.tick(step * 1.2)
    assert liveness.lost(4.8) == ["a"]
