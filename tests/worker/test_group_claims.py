"""A task_id belongs to one worker of the group: claims that cannot be forged, duplicates, a claim refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.protocol.models import CancelRequest
from ansible_worker.protocol.signing import Signer, generate_key_pair
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.journal import Journal
from ansible_worker.worker.service import Worker
from ansible_worker.worker.unknown_claim_keys import UnknownClaimKeys
from tests.conftest import (
    Broker,
    Controller,
    client_for,
    make_settings,
    open_controller,
    require_signatures,
    running_worker,
)
from tests.worker.group_jobs import QUICK, append_job, run_count


async def wait_logged(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> None:
    with trio.fail_after(30):
        while sum(text in record.getMessage() for record in caplog.records) < count:  # noqa: ASYNC110 - log records have no event
            await trio.sleep(0.01)


async def retained_claim(broker: Broker, group: str, task_id: str) -> dict[str, Any]:
    async with client_for(broker, group) as watcher:
        feed = await watcher.subscribe([watcher.topics.claim(task_id)])
        with trio.fail_after(10):
            return dict(json.loads((await feed.receive()).payload))


async def test_a_task_id_runs_once_in_the_group_without_signatures(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Publishing a job again (as `submit` does when no `queued` comes back) never runs it twice."""
    job = append_job("again", tmp_path)
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="a")),
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="b")),
    ):
        # Two copies at once, which the broker hands to different members...
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controller.submit, job)
            nursery.start_soon(controller.submit, job)
        first = await controller.wait_terminal("again")
        # ...and four more after it ended, on whichever worker the broker picks.
        for _ in range(4):
            await controller.submit(job)
        await wait_logged(caplog, "task again: refused a", count=5)
        await controller.sync()
        statuses = list(controller.statuses["again"])
    assert first["state"] == "success"
    assert run_count("again", tmp_path) == 1
    assert len([status for status in statuses if status["state"] == "success"]) == 1
    assert all(status["worker_id"] == first["worker_id"] for status in statuses if status.get("worker_id"))


async def test_forged_releases_and_cleared_claims_do_not_reopen_a_signed_job(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice, mallory = Signer.from_file(keys / "alice.key"), Signer.from_file(keys / "mallory.key")
    topics = Topics("ansible", group)
    # Worker a's window is wide enough that its replay is judged a duplicate however slow the run
    # was; the fresh worker's is short, so that the job is old by the time it hears it.
    security = {**require_signatures(keys), "max_task_age": 120, "max_clock_skew": 0}
    short_window = {**security, "max_task_age": 4}
    issued = datetime.now(UTC)
    original = json.dumps(alice.sign(topics.tasks, append_job("once", tmp_path), now=issued)).encode()
    claim_topic = topics.claim("once")

    async def forge(controller: Controller, claim_id: str) -> None:
        """Everything a client that may write the claim topic can do without a worker key."""
        release = {"state": "released", "worker_id": "a", "claim": "forged", "releases": claim_id}
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        for payload in (
            release,
            {**release, "expires_at": until},
            alice.sign(claim_topic, {**release, "expires_at": until}),  # a controller's key, not a worker's
            mallory.sign(claim_topic, {**release, "expires_at": until}),
        ):
            await controller.link.publish(claim_topic, json.dumps(payload).encode(), qos=1, retain=True)
        await controller.link.publish(claim_topic, b"", qos=1, retain=True)

    async def answered(controller: Controller, task_id: str) -> None:
        # Messages are handled in order: once a later job has run, the replay was seen.
        await controller.submit(alice.sign(topics.tasks, append_job(task_id, tmp_path)))
        assert (await controller.wait_terminal(task_id))["state"] == "success"

    async with open_controller(broker, group) as controller:
        settings = make_settings(broker.port, playbook_dir, group, security=security, worker_id="a")
        async with running_worker(settings):
            await controller.submit(original)
            assert (await controller.wait_terminal("once"))["state"] == "success"
            claim = await retained_claim(broker, group, "once")
            await forge(controller, claim["claim"])
            # The worker that heard the claim never forgets it, whatever the topic says now.
            await controller.submit(original)
            await answered(controller, "after-forgery")
        # A worker that never heard the claim, once the job is older than max_task_age: a forged
        # release does not let it skip the age check.
        await trio.sleep(max(0.0, (issued + timedelta(seconds=4.5) - datetime.now(UTC)).total_seconds()))
        await forge(controller, claim["claim"])
        fresh = make_settings(broker.port, playbook_dir, group, security=short_window, worker_id="fresh")
        async with running_worker(fresh):
            await controller.submit(original)
            await answered(controller, "after-expiry")
        statuses = controller.statuses["once"]
    assert run_count("once", tmp_path) == 1
    assert [status["state"] for status in statuses].count("success") == 1
    assert "task once: refused a replay signed by alice: the group already took this task_id (worker a)" in caplog.text
    assert [s for s in statuses if s.get("refused")][-1]["error_message"].startswith("expired: issued")


async def test_claims_in_flight_count_against_the_queue(
    broker: Broker, playbook_dir: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of valid jobs cannot spawn more claim tasks than the queue has room for."""
    settings = make_settings(broker.port, playbook_dir, group, max_queue_size=2, concurrency=1)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        claim, release = worker.claims.claim, trio.Event()

        async def slow_claim(
            task_id: str, claim_id: str, *, also_ours: frozenset[str] = frozenset(), request_sha256: str | None = None
        ) -> bool:
            await release.wait()
            return await claim(task_id, claim_id, also_ours=also_ours, request_sha256=request_sha256)

        worker.claims.claim = slow_claim  # type: ignore[method-assign]
        for index in range(6):
            await controller.submit({"task_id": f"flood-{index}", **QUICK})
        with trio.fail_after(30):
            refused = [await controller.wait_terminal(f"flood-{index}") for index in range(2, 6)]
        release.set()
        ran = [await controller.wait_terminal(f"flood-{index}") for index in range(2)]
    assert all(status["error_message"] == "queue full (max 2)" for status in refused)
    assert all(status["refused"] for status in refused)
    assert [status["state"] for status in ran] == ["success", "success"]


async def test_a_job_whose_claim_was_cut_short_by_a_crash_runs_after_the_restart(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    """The broker will not send a job again once a worker took it: the journal has it before the claim."""
    settings = make_settings(broker.port, playbook_dir, group, worker_id="crashing", state_dir=tmp_path / "state")
    async with open_controller(broker, group) as controller:
        worker = Worker(settings)
        claiming = trio.Event()

        async def never_confirmed(task_id: str, *args: Any, **options: Any) -> bool:
            claiming.set()
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        worker.claims.claim = never_confirmed  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            with trio.fail_after(15):
                await worker.session.wait_connected()
            await controller.submit(append_job("cut-short", tmp_path))
            with trio.fail_after(10):
                await claiming.wait()
            # A crash, not a shutdown: nothing of the worker runs after this.
            nursery.cancel_scope.cancel()
        assert "cut-short" not in controller.statuses
        async with running_worker(settings):
            final = await controller.wait_terminal("cut-short", within=60)
    assert final["state"] == "success"
    assert final["worker_id"] == "crashing"
    assert run_count("cut-short", tmp_path) == 1


async def test_a_queued_job_runs_after_a_crash_even_under_a_new_worker_id(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    """The default worker_id changes at each start: the journal knows the claim by its id, not by name."""
    state = tmp_path / "state"
    first = make_settings(broker.port, playbook_dir, group, worker_id="before", state_dir=state, concurrency=1)
    again = make_settings(broker.port, playbook_dir, group, worker_id="after", state_dir=state)
    async with open_controller(broker, group) as controller:
        worker = Worker(first)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            with trio.fail_after(15):
                await worker.session.wait_connected()
            sleeper = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 60}}
            await controller.submit({"task_id": "crash-running", **sleeper})
            await controller.wait_for("crash-running", {"running"})
            await controller.submit(append_job("crash-queued", tmp_path))
            await controller.wait_for("crash-queued", {"queued"})
            # A crash for the queued job (no drain, no hand-back); the running one is cancelled.
            nursery.cancel_scope.cancel()
        async with running_worker(again):
            final = await controller.wait_terminal("crash-queued", within=60)
    assert final["state"] == "success"
    assert final["worker_id"] == "after"
    assert run_count("crash-queued", tmp_path) == 1


async def test_a_claim_is_renewed_when_its_job_ends(broker: Broker, playbook_dir: Path, group: str) -> None:
    """A claim must outlive the status it protects, however long the job ran."""
    async with (
        client_for(broker, group) as watcher,
        running_worker(make_settings(broker.port, playbook_dir, group)),
        client_for(broker, group) as client,
    ):
        feed = await watcher.subscribe([watcher.topics.claim("renewed")])
        await (await client.submit({"task_id": "renewed", **QUICK})).wait()
        with trio.fail_after(10):
            first = json.loads((await feed.receive()).payload)
            second = json.loads((await feed.receive()).payload)
    assert first["state"] == second["state"] == "claimed"
    assert first["claim"] == second["claim"]
    assert second["expires_at"] > first["expires_at"]


async def test_a_queue_full_of_cancelled_jobs_refuses_before_it_claims(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    """Cancelled queued jobs keep their places until a slot takes them out: a new job is refused live, unclaimed."""
    settings = make_settings(broker.port, playbook_dir, group, max_queue_size=2, concurrency=1)
    sleeper = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 60}}
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit({"task_id": "full-running", **sleeper})
        await controller.wait_for("full-running", {"running"})
        for task_id in ("full-q1", "full-q2"):
            await controller.submit({"task_id": task_id, **QUICK})
            await controller.wait_for(task_id, {"queued"})
            await controller.link.publish(controller.topics.cancel(task_id), b"", qos=1)
            await controller.wait_terminal(task_id)
        await controller.submit({"task_id": "full-next", **QUICK})
        refused = await controller.wait_terminal("full-next")
        assert worker.claims.holder("full-next") is None
        worker.jobs.cancel("full-running", CancelRequest(reason="enough"))
        # Refused live, so the same task_id may come again once there is room.
        with trio.fail_after(30):
            while worker.jobs.buffered:  # noqa: ASYNC110 - the queue's own state, bounded
                await trio.sleep(0.05)
        await controller.submit({"task_id": "full-next", **QUICK})
        with trio.fail_after(60):
            while not controller.statuses["full-next"] or controller.statuses["full-next"][-1]["state"] != "success":  # noqa: ASYNC110 - statuses arrive on the wire
                await trio.sleep(0.05)
    assert refused["refused"] is True
    assert refused["error_message"] == "queue full (max 2)"


async def test_claims_signed_by_a_worker_key_this_worker_does_not_list_are_warned_about_once(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers with keys of their own and no worker_keys: neither counts the other's claims, and says so."""
    generate_key_pair(keys / "east.key", keys / "east.pub")
    alice = Signer.from_file(keys / "alice.key")
    fingerprints = {
        "a": Signer.from_file(keys / "worker.key").fingerprint,
        "b": Signer.from_file(keys / "east.key").fingerprint,
    }
    own_key = {"a": require_signatures(keys), "b": {**require_signatures(keys), "worker_key": keys / "east.key"}}
    topics = Topics("ansible", group)
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group, security=own_key["a"], worker_id="a")),
        running_worker(make_settings(broker.port, playbook_dir, group, security=own_key["b"], worker_id="b")),
    ):
        # Each job is claimed, and claimed again when it ends: one worker makes at least four claims.
        for index in range(4):
            await controller.submit(alice.sign(topics.tasks, {"task_id": f"k-{index}", **QUICK}))
        finals = [await controller.wait_terminal(f"k-{index}") for index in range(4)]
        await controller.sync()
    assert [final["state"] for final in finals] == ["success"] * 4
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "worker_keys" in r.getMessage()]
    claimers = {final["worker_id"] for final in finals}
    for worker_id in claimers:
        about = [message for message in warnings if fingerprints[worker_id] in message]
        assert len(about) == 1, warnings
        assert f"worker '{worker_id}'" in about[0]
        assert "does not count here" in about[0]
        assert "list its public key under security.worker_keys on every worker" in about[0]


def test_unknown_claim_keys_are_named_once_each_within_a_bound(caplog: pytest.LogCaptureFixture) -> None:
    """A flood of claims with made-up keys costs bounded memory and a bounded number of log lines."""
    unknown = UnknownClaimKeys(limit=3)
    for index in range(1000):
        unknown.heard(f"t{index}", f"{index % 10:032x}", "w2")
    unknown.heard("t", "not a fingerprint\nFAKE LOG LINE", "w2")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 4
    assert [f"{index:032x}" in warnings[index] for index in range(3)] == [True] * 3
    assert warnings[3].startswith("claims are signed by more than 3 worker keys this worker does not list")
    assert not any("FAKE LOG LINE" in message for message in warnings)


async def test_a_claim_the_broker_refuses_refuses_the_job_and_leaves_no_journal_entry(
    tmp_path: Path, playbook_dir: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that may not write claims never runs a job: it is answered `failed` live, and not kept for a restart."""
    directory = tmp_path / "acl-broker"
    directory.mkdir()
    acl = directory / "acl"
    writable = ("tasks", "tasks/+/status", "tasks/+/cancel", "tasks/+/events", "workers/#")
    acl.write_text(
        "".join(f"topic readwrite ansible/{group}/{topic}\n" for topic in writable)
        + f"topic read ansible/{group}/tasks/+/claim\n"
    )
    broker = Broker(directory, access=f"allow_anonymous true\nacl_file {acl}\n")
    broker.start()
    state = tmp_path / "state"
    try:
        settings = make_settings(broker.port, playbook_dir, group, state_dir=state)
        async with open_controller(broker, group) as controller, running_worker(settings):
            await controller.submit(append_job("unclaimable", tmp_path))
            final = await controller.wait_terminal("unclaimable", within=30)
    finally:
        broker.stop()
    assert final["state"] == "failed"
    assert final["refused"] is True
    assert final["error_message"].startswith("could not claim the job for this worker: ")
    assert "check the broker's ACL for this worker" in final["error_message"]
    assert run_count("unclaimable", tmp_path) == 0
    journal = Journal(state)
    try:
        assert journal.entries() == []
    finally:
        journal.close()
