"""Signed jobs on the wire: what runs, what is refused and why, and replays refused by the whole group."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.ops.config import Settings
from ansible_worker.protocol.claims import new_claim_id
from ansible_worker.protocol.signing import Signer, fingerprint, load_private_key, signed_bytes
from ansible_worker.protocol.timestamps import format_utc
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.service import Worker
from tests.conftest import (
    Broker,
    Controller,
    client_for,
    make_settings,
    open_controller,
    require_signatures,
    running_worker,
)

SLEEP = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 60}}


def signed_settings(broker: Broker, playbook_dir: Path, group: str, keys: Path, **worker: Any) -> Settings:
    return make_settings(broker.port, playbook_dir, group, security=require_signatures(keys), **worker)


def touch_job(task_id: str, markers: Path) -> dict[str, Any]:
    """A job that leaves a file behind if it runs."""
    return {
        "task_id": task_id,
        "playbook": "touch.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"marker": str(markers / f"{task_id}.ran")},
    }


def ran(task_id: str, markers: Path) -> bool:
    return (markers / f"{task_id}.ran").exists()


async def test_only_jobs_signed_by_a_trusted_key_run(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path
) -> None:
    alice, mallory = Signer.from_file(keys / "alice.key"), Signer.from_file(keys / "mallory.key")
    tasks = Topics("ansible", group).tasks
    long_ago = datetime.now(UTC) - timedelta(seconds=400)
    tampered = alice.sign(tasks, touch_job("s-tampered", tmp_path))
    tampered["extra_vars"]["marker"] = str(tmp_path / "elsewhere")
    attempts: dict[str, tuple[dict[str, Any], str]] = {
        "s-unsigned": (touch_job("s-unsigned", tmp_path), "unsigned: this worker requires signed messages"),
        "s-tampered": (tampered, "bad signature: it does not match the message (key 'alice')"),
        "s-untrusted": (
            mallory.sign(tasks, touch_job("s-untrusted", tmp_path)),
            f"signed with a key this worker does not trust (fingerprint {mallory.fingerprint})",
        ),
        "s-expired": (
            alice.sign(tasks, touch_job("s-expired", tmp_path), now=long_ago),
            "expired: issued 400s ago, more than security.max_task_age (300s)",
        ),
        "s-other-group": (
            alice.sign(Topics("ansible", "other").tasks, touch_job("s-other-group", tmp_path)),
            "bad signature",
        ),
    }
    settings = signed_settings(broker, playbook_dir, group, keys)
    async with open_controller(broker, group) as controller, running_worker(settings):
        for message, _ in attempts.values():
            await controller.submit(message)
        await controller.submit(alice.sign(tasks, touch_job("s-good", tmp_path)))
        good = await controller.wait_terminal("s-good")
        refusals = {task_id: await controller.wait_terminal(task_id) for task_id in attempts}
    assert good["state"] == "success", good["error_message"]
    assert ran("s-good", tmp_path)
    for task_id, (_, reason) in attempts.items():
        status = refusals[task_id]
        assert status["state"] == "failed"
        assert status["error_message"].startswith(reason), status["error_message"]
        assert status["refused"] is True
        assert status["started_at"] is None
        assert not ran(task_id, tmp_path)
    assert not (tmp_path / "elsewhere").exists()


async def statuses_after_sync(controller: Controller, task_id: str) -> list[dict[str, Any]]:
    await controller.sync()
    return list(controller.statuses.get(task_id, []))


async def test_a_replayed_job_runs_on_no_worker_of_the_group(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = Signer.from_file(keys / "alice.key")
    tasks = Topics("ansible", group).tasks
    original = json.dumps(alice.sign(tasks, touch_job("r-1", tmp_path))).encode()
    async with open_controller(broker, group) as controller:
        async with running_worker(signed_settings(broker, playbook_dir, group, keys, worker_id="first")):
            await controller.submit(original)
            first = await controller.wait_terminal("r-1")
        assert first["state"] == "success"
        assert first["worker_id"] == "first"
        (tmp_path / "r-1.ran").unlink()
        before = await statuses_after_sync(controller, "r-1")

        # Another worker of the group, started after the job ran: it knows only what the
        # broker kept. The replay reaches it alone, since the first worker has gone.
        async with running_worker(signed_settings(broker, playbook_dir, group, keys, worker_id="second")):
            await controller.submit(original)
            # Handled in order: once the next job is answered, the replay has been seen.
            await controller.submit(alice.sign(tasks, touch_job("r-next", tmp_path)))
            assert (await controller.wait_terminal("r-next"))["state"] == "success"
        after = await statuses_after_sync(controller, "r-1")
    assert after == before
    assert not ran("r-1", tmp_path)
    replays = [r.getMessage() for r in caplog.records if "refused a replay" in r.getMessage()]
    assert replays == [
        "task r-1: refused a replay signed by alice: the group already took this task_id (worker first);"
        " the original job's status is left alone"
    ]
    async with client_for(broker, group) as client:
        retained = await client.status("r-1")
    assert retained == first


async def test_the_same_signed_job_sent_twice_at_once_runs_once(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = Signer.from_file(keys / "alice.key")
    payload = json.dumps(alice.sign(Topics("ansible", group).tasks, touch_job("twice", tmp_path))).encode()
    async with (
        open_controller(broker, group) as controller,
        running_worker(signed_settings(broker, playbook_dir, group, keys, worker_id="a")),
        running_worker(signed_settings(broker, playbook_dir, group, keys, worker_id="b")),
    ):
        # Both copies in flight together; the broker hands them to different members.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controller.submit, payload)
            nursery.start_soon(controller.submit, payload)
        final = await controller.wait_terminal("twice")
        with trio.fail_after(30):
            while not any("refused a replay" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 - a log record has no event
                await trio.sleep(0.01)
        statuses = await statuses_after_sync(controller, "twice")
    assert final["state"] == "success"
    assert [s["state"] for s in statuses].count("queued") == 1
    assert len([s for s in statuses if s["state"] in ("success", "failed")]) == 1


async def test_claims_made_at_the_same_moment_have_one_winner(
    broker: Broker, playbook_dir: Path, group: str, keys: Path
) -> None:
    """The race a replay could exploit, made certain: two workers claim one task_id together."""
    results: dict[str, bool] = {}
    async with (
        running_worker(signed_settings(broker, playbook_dir, group, keys, worker_id="a")) as a,
        running_worker(signed_settings(broker, playbook_dir, group, keys, worker_id="b")) as b,
    ):

        async def claim(worker: Worker) -> None:
            results[worker.worker_id] = await worker.claims.claim("race", new_claim_id())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim, a)
            nursery.start_soon(claim, b)
        holders = {
            (holder.worker_id, holder.claim_id)
            for holder in (a.claims.holder("race"), b.claims.holder("race"))
            if holder is not None
        }
    assert sorted(results.values()) == [False, True]
    winner = next(worker_id for worker_id, won in results.items() if won)
    assert len(holders) == 1
    assert next(iter(holders))[0] == winner


async def test_cancel_requests_must_be_signed_too(broker: Broker, playbook_dir: Path, group: str, keys: Path) -> None:
    alice = Signer.from_file(keys / "alice.key")
    topics = Topics("ansible", group)
    settings = signed_settings(broker, playbook_dir, group, keys)
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit(alice.sign(topics.tasks, {"task_id": "c-1", **SLEEP}))
        await controller.wait_for("c-1", {"running"})
        cancel = topics.cancel("c-1")
        unsigned = json.dumps({"reason": "unsigned"}).encode()
        for_another_job = alice.sign(topics.cancel("c-other"), {"reason": "meant for another job"})
        await controller.link.publish(cancel, unsigned, qos=1)
        await controller.link.publish(cancel, json.dumps(for_another_job).encode(), qos=1)
        signed = alice.sign(cancel, {"reason": "signed", "requested_by": "alice"})
        await controller.link.publish(cancel, json.dumps(signed).encode(), qos=1)
        final = await controller.wait_terminal("c-1")
    # The worker handles cancel requests in order: had it obeyed an earlier one, its reason would show.
    assert final["state"] == "cancelled"
    assert final["error_message"] == "cancelled by alice: signed"


async def test_a_cancel_that_arrives_while_the_claim_is_in_flight_is_kept(
    broker: Broker, playbook_dir: Path, group: str, keys: Path
) -> None:
    alice = Signer.from_file(keys / "alice.key")
    topics = Topics("ansible", group)
    settings = signed_settings(broker, playbook_dir, group, keys)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        # The claim's round trip is a millisecond: hold it, so the cancel surely comes during it.
        claim, claiming, go_on = worker.claims.claim, trio.Event(), trio.Event()

        async def held_claim(
            task_id: str, claim_id: str, *, also_ours: frozenset[str] = frozenset(), request_sha256: str | None = None
        ) -> bool:
            claiming.set()
            await go_on.wait()
            return await claim(task_id, claim_id, also_ours=also_ours, request_sha256=request_sha256)

        worker.claims.claim = held_claim  # type: ignore[method-assign]
        await controller.submit(alice.sign(topics.tasks, {"task_id": "c-early", **SLEEP}))
        with trio.fail_after(10):
            await claiming.wait()
        cancel = alice.sign(topics.cancel("c-early"), {"reason": "too early", "requested_by": "alice"})
        await controller.link.publish(topics.cancel("c-early"), json.dumps(cancel).encode(), qos=1)
        with trio.fail_after(10):
            while worker.jobs.pending_cancel("c-early") is None:  # noqa: ASYNC110 - the worker's own state, bounded
                await trio.sleep(0.01)
        go_on.set()
        final = await controller.wait_terminal("c-early", within=30)
    assert final["state"] == "cancelled"
    assert final["error_message"] == "cancelled by alice: too early"


async def test_the_python_client_signs_jobs_and_cancel_requests(
    broker: Broker, playbook_dir: Path, group: str, keys: Path
) -> None:
    async with (
        running_worker(signed_settings(broker, playbook_dir, group, keys)),
        client_for(broker, group, signer=Signer.from_file(keys / "alice.key")) as client,
    ):
        job = await client.submit({"task_id": "py-1", **SLEEP})
        async for status in job.statuses():
            if status["state"] == "running":
                await job.cancel(reason="enough")
        final = job.latest
    assert final is not None
    assert final["state"] == "cancelled"
    assert final["error_message"].endswith(": enough")


async def test_an_unverified_message_cannot_touch_the_status_of_a_job_the_group_holds(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topics = Topics("ansible", group)
    sleeping = {"task_id": "held", "playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 2}}
    settings = signed_settings(broker, playbook_dir, group, keys, worker_id="holder")
    async with (
        open_controller(broker, group) as controller,
        running_worker(settings),
        client_for(broker, group, signer=Signer.from_file(keys / "alice.key")) as client,
    ):
        job = await client.submit(sleeping)
        async for status in job.statuses():
            if status["state"] == "running":
                break
        # An unsigned job reusing the task_id: the worker only logs it.
        await controller.submit(touch_job("held", tmp_path))
        # Messages are handled in order: once this one is queued, the forgery has been handled.
        after = await client.submit({"task_id": "after", **SLEEP, "extra_vars": {"seconds": 0}})
        # A refusal someone else publishes on the job's topic: the client does not take it for the end.
        forged = {"task_id": "held", "state": "failed", "error_message": "unsigned", "refused": True}
        await controller.link.publish(topics.status("held"), json.dumps(forged).encode(), qos=1)
        with trio.fail_after(30):
            final = await job.wait()
            await after.wait()
        statuses = await statuses_after_sync(controller, "held")
    assert final["state"] == "success"
    assert not ran("held", tmp_path)
    assert [s for s in statuses if s.get("refused") and s.get("worker_id") == "holder"] == []
    assert [r.getMessage() for r in caplog.records if "for a job the group holds" in r.getMessage()] == [
        "task held: refused a message (unsigned: this worker requires signed messages"
        " (security.require_signed_tasks)) for a job the group holds (worker holder); its status is left alone"
    ]


# Names an artifact after a version, as a release playbook does: Ansible renders 2 and 2.0 apart.
ARTIFACT_PLAY = [
    {
        "name": "Name the artifact",
        "hosts": "host1",
        "gather_facts": False,
        "tasks": [
            {
                "name": "Write its name",
                "ansible.builtin.copy": {
                    "content": "app-{{ version }}.tar.gz ({{ range(count) | length }} parts)",
                    "dest": "{{ marker }}",
                    "mode": "0600",
                },
            }
        ],
    }
]


async def test_a_signed_job_runs_with_the_numbers_its_signature_covers(
    broker: Broker, playbook_dir: Path, group: str, keys: Path, tmp_path: Path
) -> None:
    """RFC 8785 writes 2 and 2.0 alike: a copy whose number was rewritten runs as signed, not as rewritten."""
    (playbook_dir / "artifact.yml").write_text(json.dumps(ARTIFACT_PLAY))
    alice = Signer.from_file(keys / "alice.key")
    tasks = Topics("ansible", group).tasks

    def artifact_job(task_id: str, version: float) -> dict[str, Any]:
        marker = str(tmp_path / f"{task_id}.name")
        return {
            "task_id": task_id,
            "playbook": "artifact.yml",
            "inventory": "one_host.ini",
            "extra_vars": {"version": version, "marker": marker, "count": 3},
        }

    def artifact(task_id: str) -> str | None:
        path = tmp_path / f"{task_id}.name"
        return path.read_text() if path.exists() else None

    original = json.dumps(alice.sign(tasks, artifact_job("n-int", 2)))
    # Someone who may publish on the tasks topic took the job and sent it on, its numbers rewritten.
    rewritten = original.replace('"version": 2', '"version": 2.0').replace('"count": 3', '"count": 3.0')
    assert rewritten.count(".0") == original.count(".0") + 2
    settings = signed_settings(broker, playbook_dir, group, keys)
    async with (
        open_controller(broker, group) as controller,
        running_worker(settings),
        client_for(broker, group, signer=alice) as client,
    ):
        await controller.submit(rewritten.encode())
        ran = await controller.wait_terminal("n-int")
        # The Python client asked for 2.0 sends what it signs: 2, the number RFC 8785 writes.
        from_client = await (await client.submit(artifact_job("n-client", 2.0), events=False)).wait()
    assert ran["state"] == "success", ran["error_message"]
    assert artifact("n-int") == "app-2.tar.gz (3 parts)"
    assert from_client["state"] == "success", from_client["error_message"]
    assert artifact("n-client") == "app-2.tar.gz (3 parts)"


async def test_a_signed_whole_float_beyond_2_53_is_refused(
    broker: Broker, playbook_dir: Path, group: str, keys: Path
) -> None:
    """Another implementation signs 1e16 as RFC 8785 writes it; as signed it is an integer beyond 2**53."""
    topic = Topics("ansible", group).tasks
    key = load_private_key(keys / "alice.key")
    body = {
        "task_id": "big-float",
        "playbook": "quick.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"n": 1e16},
        "issued_at": format_utc(datetime.now(UTC)),
    }
    value = base64.b64encode(key.sign(signed_bytes(topic, body))).decode()
    payload = json.dumps({**body, "signature": {"key": fingerprint(key.public_key()), "value": value}})
    async with (
        open_controller(broker, group) as controller,
        running_worker(signed_settings(broker, playbook_dir, group, keys)),
    ):
        await controller.submit(payload.encode())
        final = await controller.wait_terminal("big-float")
    assert final["state"] == "failed"
    assert (final["error_message"] or "").startswith("the message has no canonical JSON form (RFC 8785)")
