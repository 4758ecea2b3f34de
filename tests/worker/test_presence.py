"""The presence announcer against an in-memory session: when it publishes, and what it says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from ansible_worker.mqtt.link import LinkLost
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.group_messages import Presence
from ansible_worker.protocol.timestamps import parse_utc
from ansible_worker.worker.policies import PresencePolicy
from ansible_worker.worker.presence import Load, PresenceAnnouncer, WorkerState

TOPIC = "ansible/g/workers/w1"
INTERVAL = 10.0


@dataclass
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float

    @property
    def body(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.payload)
        return decoded


@dataclass
class FakeSession:
    """The two things the announcer uses of a `BrokerSession`: `wait_connected` and `publish`."""

    connected: trio.Event = field(default_factory=trio.Event)
    published: list[Published] = field(default_factory=list)
    # Each publish call takes the next of these: None succeeds, an exception is raised.
    failures: list[Exception | None] = field(default_factory=list)
    # When set, a publish waits for this event before it completes.
    hold: trio.Event | None = None
    _grew: trio.Event = field(default_factory=trio.Event)

    async def wait_connected(self) -> None:
        await self.connected.wait()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
    ) -> None:
        await trio.lowlevel.checkpoint()
        if self.hold is not None:
            await self.hold.wait()
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure
        self.published.append(Published(topic, payload, qos, retain, trio.current_time()))
        self._grew.set()
        self._grew = trio.Event()

    async def wait_for(self, count: int) -> list[Published]:
        """Until at least `count` messages were published (bounded by the caller)."""
        while len(self.published) < count:
            await self._grew.wait()
        return self.published


class Loads:
    def __init__(self) -> None:
        self.now = Load(running=0, queued=0, jobs_done=0)

    def __call__(self) -> Load:
        return self.now


def announcer(session: FakeSession, loads: Loads | None = None, *, interval: float = INTERVAL) -> PresenceAnnouncer:
    return PresenceAnnouncer(
        cast(BrokerSession, session),
        TOPIC,
        worker_id="w1",
        policy=PresencePolicy(capacity=4, interval=interval),
        load=loads or Loads(),
    )


@asynccontextmanager
async def running(presence: PresenceAnnouncer) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(presence.serve)
        yield
        nursery.cancel_scope.cancel()


async def test_nothing_is_published_before_the_session_connects(autojump_clock: trio.testing.MockClock) -> None:
    """The announcer waits for a connection, then publishes at once, retained at QoS 1."""
    session = FakeSession()
    async with running(announcer(session)):
        await trio.sleep(100)
        assert session.published == []
        session.connected.set()
        with trio.fail_after(1):
            [first] = await session.wait_for(1)
    assert (first.topic, first.qos, first.retain, first.at) == (TOPIC, 1, True, 100)
    assert first.body["state"] == "online"


async def test_heartbeats_come_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    """With nothing changing, the presence is published again exactly every `interval` seconds."""
    session = FakeSession()
    session.connected.set()
    async with running(announcer(session)):
        with trio.fail_after(5 * INTERVAL):
            published = await session.wait_for(4)
        start = published[0].at
        assert [p.at - start for p in published[:4]] == [0, INTERVAL, 2 * INTERVAL, 3 * INTERVAL]
        assert all(p.body["heartbeat_interval"] == INTERVAL for p in published)


async def test_changed_calls_coalesce_into_one_publication(autojump_clock: trio.testing.MockClock) -> None:
    """Several `changed` calls at once give one publication now, and the next heartbeat a full interval later."""
    session = FakeSession()
    session.connected.set()
    presence = announcer(session)
    async with running(presence):
        with trio.fail_after(1):
            await session.wait_for(1)
        await trio.sleep(3)
        changed_at = trio.current_time()
        for _ in range(5):
            presence.changed()
        with trio.fail_after(1):
            await session.wait_for(2)
        await trio.sleep(INTERVAL - 0.5)
        assert len(session.published) == 2
        with trio.fail_after(1):
            published = await session.wait_for(3)
    assert [p.at for p in published] == [0, changed_at, changed_at + INTERVAL]


async def test_a_change_during_a_publication_is_not_lost(autojump_clock: trio.testing.MockClock) -> None:
    """`changed` while a publication is on its way gives another one right after it, not a heartbeat later."""
    session = FakeSession()
    session.connected.set()
    session.hold = trio.Event()
    loads = Loads()
    presence = announcer(session, loads)
    async with running(presence):
        await trio.sleep(1)  # the first publication is waiting for the broker
        loads.now = Load(running=1, queued=2, jobs_done=3)
        presence.changed()
        session.hold.set()
        with trio.fail_after(1):
            published = await session.wait_for(2)
    assert published[1].at == published[0].at
    assert (published[1].body["running"], published[1].body["queued"], published[1].body["jobs_done"]) == (1, 2, 3)


async def test_set_state_publishes_the_new_state_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """`set_state(DRAINING)` changes `state` and is on the wire without waiting for a heartbeat."""
    session = FakeSession()
    session.connected.set()
    presence = announcer(session)
    async with running(presence):
        with trio.fail_after(1):
            await session.wait_for(1)
        await trio.sleep(2)
        presence.set_state(WorkerState.DRAINING)
        assert presence.state is WorkerState.DRAINING
        with trio.fail_after(1):
            published = await session.wait_for(2)
    assert [p.body["state"] for p in published] == ["online", "draining"]
    assert published[1].at == 2


async def test_connected_publishes_again_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """After a reconnection (`connected`), the presence goes out again without waiting for the heartbeat."""
    session = FakeSession()
    session.connected.set()
    presence = announcer(session)
    async with running(presence):
        with trio.fail_after(1):
            await session.wait_for(1)
        await trio.sleep(4)
        presence.connected()
        with trio.fail_after(1):
            published = await session.wait_for(2)
    assert published[1].at == 4


async def test_a_failed_publication_is_retried_shortly(autojump_clock: trio.testing.MockClock) -> None:
    """A `LinkError` from `publish` is not fatal: the announcer tries again 0.2 s later, not a heartbeat later."""
    session = FakeSession(failures=[LinkLost("gone"), LinkLost("still gone")])
    session.connected.set()
    async with running(announcer(session)):
        with trio.fail_after(2):
            [first] = await session.wait_for(1)
    assert first.at == pytest.approx(0.4)


async def test_the_message_says_who_and_how_loaded(autojump_clock: trio.testing.MockClock) -> None:
    """Each publication is a valid `Presence` with the load as it is when it is built."""
    session = FakeSession()
    session.connected.set()
    loads = Loads()
    presence = announcer(session, loads)
    async with running(presence):
        with trio.fail_after(1):
            await session.wait_for(1)
        loads.now = Load(running=2, queued=5, jobs_done=7)
        with trio.fail_after(2 * INTERVAL):
            published = await session.wait_for(2)
    first, second = (Presence.model_validate_json(p.payload) for p in published[:2])
    assert (first.worker_id, first.capacity, first.protocol, first.running, first.queued) == ("w1", 4, 1, 0, 0)
    assert (second.running, second.queued, second.jobs_done) == (2, 5, 7)
    assert second.started_at == first.started_at
    assert parse_utc(second.heartbeat_at) >= parse_utc(first.started_at)


def test_the_will_says_offline_retained() -> None:
    """`will()` is the presence with state `offline`, QoS 1, retained, on the worker's topic; `state` is unchanged."""
    loads = Loads()
    loads.now = Load(running=1, queued=0, jobs_done=9)
    presence = announcer(FakeSession(), loads)
    will = presence.will()
    assert (will.topic, will.qos, will.retain) == (TOPIC, 1, True)
    body = Presence.model_validate_json(will.payload)
    assert (body.state, body.running, body.jobs_done, body.stopped) == ("offline", 1, 9, "lost")
    assert presence.state is WorkerState.ONLINE


def test_a_signing_worker_signs_its_presence_and_its_will(tmp_path: Path) -> None:
    """With a worker key, every presence verifies against the worker's public key, over its topic."""
    from ansible_worker.protocol.signing import Signer, TrustedKeys, generate_key_pair

    generate_key_pair(tmp_path / "w.key", tmp_path / "w.pub")
    trusted = TrustedKeys.from_files({"w": tmp_path / "w.pub"})
    presence = PresenceAnnouncer(
        cast(BrokerSession, FakeSession()),
        TOPIC,
        worker_id="w1",
        policy=PresencePolicy(capacity=4, interval=INTERVAL),
        load=Loads(),
        signer=Signer.from_file(tmp_path / "w.key"),
    )
    for payload, state in ((presence.message(), "online"), (presence.will().payload, "offline")):
        document = json.loads(payload)
        assert document["state"] == state
        assert trusted.verify(TOPIC, document).signer == "w"


def test_signed_presences_are_issued_ever_later_even_when_the_clock_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group takes a signed presence as a sign of life only when newer than the last one."""
    from ansible_worker.protocol.signing import Signer, generate_key_pair
    from ansible_worker.worker import presence as module

    generate_key_pair(tmp_path / "w.key", tmp_path / "w.pub")
    presence = PresenceAnnouncer(
        cast(BrokerSession, FakeSession()),
        TOPIC,
        worker_id="w1",
        policy=PresencePolicy(capacity=4, interval=INTERVAL),
        load=Loads(),
        signer=Signer.from_file(tmp_path / "w.key"),
    )
    # The wall clock reads the same instant twice, then steps back a minute.
    readings = iter([datetime(2026, 1, 1, 0, 1, 0, 400, tzinfo=UTC)] * 2 + [datetime(2026, 1, 1, tzinfo=UTC)])

    class SteppingClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> SteppingClock:
            reading = next(readings)
            return cls.fromtimestamp(reading.timestamp(), tz=UTC)

    monkeypatch.setattr(module, "datetime", SteppingClock)
    issued = [parse_utc(json.loads(presence.message())["issued_at"]) for _ in range(3)]
    assert issued[0] < issued[1] < issued[2]


async def test_publish_offline_says_goodbye(autojump_clock: trio.testing.MockClock) -> None:
    """`publish_offline` publishes `offline`, retained at QoS 1, and leaves the announcer's state offline."""
    session = FakeSession()
    session.connected.set()
    presence = announcer(session)
    with trio.fail_after(1):
        await presence.publish_offline()
    [goodbye] = session.published
    assert (goodbye.topic, goodbye.qos, goodbye.retain, goodbye.body["state"]) == (TOPIC, 1, True, "offline")
    assert goodbye.body["stopped"] == "clean"
    assert presence.state is WorkerState.OFFLINE


async def test_publish_offline_without_a_link_only_logs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A goodbye that cannot be sent is a warning, not an error that would spoil the shutdown."""
    session = FakeSession(failures=[LinkLost("not connected")])
    presence = announcer(session)
    with trio.fail_after(1):
        await presence.publish_offline()
    assert session.published == []
    assert any("could not publish offline presence" in r.getMessage() for r in caplog.records)


def test_message_takes_an_explicit_state_and_heartbeat() -> None:
    """`message(state, heartbeat=...)` says that state and moment without changing the announcer's own state."""
    presence = announcer(FakeSession(), interval=2.5)
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = json.loads(presence.message(WorkerState.DRAINING, heartbeat=moment))
    assert (body["state"], body["heartbeat_at"], body["heartbeat_interval"]) == (
        "draining",
        "2026-01-02T03:04:05Z",
        2.5,
    )
    assert presence.state is WorkerState.ONLINE
