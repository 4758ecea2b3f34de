"""A settled job's claim lives `worker.claim_lifetime`; an older task_id is refused by its retained status.

Real broker, real workers, real playbooks: a marker file counts the runs of each job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from ansible_worker.worker.service import Worker
from tests.conftest import (
    Broker,
    Controller,
    client_for,
    make_settings,
    open_controller,
    running_worker,
    unique_seconds,
)
from tests.deployment import Deployment
from tests.worker.group_jobs import QUICK, append_job, run_count
from tests.worker.takeovers import (
    LOST_AFTER,
    TAKEOVER_BOUND,
    Scene,
    hold_jobs,
    kill_for_good,
    open_lone_worker,
    open_second_worker,
    runs,
    settled_once,
)

# Short enough for a test to outwait, long enough for a job to settle under it.
CLAIM_LIFETIME = 2


async def wait_logged(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> None:
    with trio.fail_after(30):
        while sum(text in record.getMessage() for record in caplog.records) < count:  # noqa: ASYNC110 - log records have no event
            await trio.sleep(0.01)


async def retained_claims(broker: Broker, group: str) -> dict[str, bytes]:
    """Every claim the broker retains for the group now, by task_id."""
    async with client_for(broker, group) as watcher:
        with trio.fail_after(10):
            messages = await watcher.retained(watcher.topics.claims_subscription)
    claims: dict[str, bytes] = {}
    for message in messages:
        task_id = watcher.topics.task_id_of_claim(message.topic)
        if task_id is not None and message.payload:
            claims[task_id] = message.payload
    return claims


async def wait_claim_expired(worker: Worker, task_id: str) -> None:
    """Until no live claim holds `task_id` in `worker`'s book (it heard the settled one, then it lapsed)."""
    with trio.fail_after(CLAIM_LIFETIME + 20):
        while worker.claims.holder(task_id) is not None:  # noqa: ASYNC110 - the book's own clock, bounded
            await trio.sleep(0.1)


async def statuses_after(controller: Controller, task_id: str) -> list[dict[str, object]]:
    await controller.sync()
    return list(controller.statuses.get(task_id, []))


async def test_a_task_id_whose_claim_expired_is_refused_while_its_status_is_retained(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the settled claim has lapsed, a copy of the job is refused by its retained status, and never runs."""
    job = append_job("lapsed", tmp_path)
    settings = make_settings(broker.port, playbook_dir, group, claim_lifetime=CLAIM_LIFETIME)
    async with running_worker(settings) as worker, open_controller(broker, group) as controller:
        await controller.submit(job)
        first = await controller.wait_terminal("lapsed")
        await wait_claim_expired(worker, "lapsed")
        assert "lapsed" not in await retained_claims(broker, group)
        seen = await statuses_after(controller, "lapsed")
        # Twice: the second copy finds no claim either (a refusal claims nothing).
        for count in (1, 2):
            await controller.submit(job)
            await wait_logged(caplog, "task lapsed: refused a duplicate: the group already took this task_id", count)
        after = await statuses_after(controller, "lapsed")
    assert first["state"] == "success"
    assert run_count("lapsed", tmp_path) == 1
    assert after == seen
    assert any("its status is retained: success, worker" in record.getMessage() for record in caplog.records)


async def test_a_worker_that_never_heard_the_claim_refuses_a_task_id_whose_status_is_retained(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The claim gone from the broker (lapsed, or cleared), a worker started since still refuses the copy."""
    job = append_job("gone", tmp_path)
    async with open_controller(broker, group) as controller:
        async with running_worker(make_settings(broker.port, playbook_dir, group, worker_id="first")):
            await controller.submit(job)
            first = await controller.wait_terminal("gone")
        # What an expired claim leaves: nothing retained on its topic.
        await controller.link.publish(controller.topics.claim("gone"), b"", qos=1, retain=True)
        seen = await statuses_after(controller, "gone")
        async with running_worker(make_settings(broker.port, playbook_dir, group, worker_id="later")):
            await controller.submit(job)
            await wait_logged(caplog, "task gone: refused a duplicate: the group already took this task_id")
        after = await statuses_after(controller, "gone")
    assert first["state"] == "success"
    assert run_count("gone", tmp_path) == 1
    assert after == seen


async def test_a_worker_started_after_many_settled_jobs_holds_none_of_their_claims(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    """Settled claims lapse on the broker: a worker's start-up reads, and its book holds, only live jobs."""
    jobs = [f"past-{number}" for number in range(6)]
    async with open_controller(broker, group) as controller:
        async with running_worker(
            make_settings(broker.port, playbook_dir, group, worker_id="busy", claim_lifetime=CLAIM_LIFETIME)
        ) as busy:
            for task_id in jobs:
                await controller.submit({"task_id": task_id, **QUICK})
            for task_id in jobs:
                assert (await controller.wait_terminal(task_id))["state"] == "success"
            for task_id in jobs:
                await wait_claim_expired(busy, task_id)
            assert busy.snapshot().claims == 0
        assert await retained_claims(broker, group) == {}
        async with running_worker(make_settings(broker.port, playbook_dir, group, worker_id="fresh")) as fresh:
            await fresh.sync.wait_synced()
            assert fresh.snapshot().claims == 0
            # A new job is claimed, and held while it is live.
            await controller.submit({"task_id": "live-one", **QUICK})
            await controller.wait_for("live-one", {"queued", "running", "success"})
            assert fresh.claims.holder("live-one") is not None


async def test_a_worker_restarted_long_after_its_jobs_were_taken_over_is_still_fenced(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    """A takeover's claim outlives `claim_lifetime` once settled: the lost worker's journal still finds it held."""
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    state_dir = tmp_path / "phoenix-state"
    state_dir.mkdir()
    phoenix = scene.settings("phoenix", state_dir=str(state_dir), claim_lifetime=CLAIM_LIFETIME)
    seconds = unique_seconds(274)
    async with open_lone_worker(scene, "phoenix", settings=phoenix) as (controller, client, killed):
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with open_second_worker(scene, client, "survivor", claim_lifetime=CLAIM_LIFETIME):
            # The worker and its run, for good; its journal stays.
            kill_for_good(killed.process.pid, seconds)
            with trio.fail_after(10):
                await killed.process.wait()
            with trio.fail_after(LOST_AFTER + TAKEOVER_BOUND):
                for task_id in (running, *queued):
                    await controller.wait_terminal(task_id)
            # Every settled claim but a takeover's has lapsed by now.
            await trio.sleep(CLAIM_LIFETIME + 1)
            async with deployment.process("run", "-c", str(phoenix)) as restarted:
                await restarted.wait_for_line(f"task {running}: taken over by survivor")
                ended = await settled_once(controller, [running, *queued], 30)
                assert await restarted.stop() == 0
    assert ended[running]["error_message"].startswith("worker lost: phoenix")
    for task_id in (running, *queued):
        assert runs(markers / task_id) == 1
        assert all(
            status.get("error_message") != "interrupted: worker restarted" for status in controller.statuses[task_id]
        )


def test_claim_lifetime_shorter_than_a_signed_jobs_window_is_refused_naming_the_key(
    playbook_dir: Path, keys: Path
) -> None:
    """With signed jobs a settled claim must outlive the signature's accepted age."""
    from ansible_worker.ops.config import ConfigError, load_settings

    config = playbook_dir.parent / "lifetime.json"
    config.write_text(
        json.dumps(
            {
                "mqtt": {"host": "127.0.0.1"},
                "worker": {"group_name": "g", "playbook_directory": str(playbook_dir), "claim_lifetime": 400},
                "security": {
                    "require_signed_tasks": True,
                    "trusted_keys": {"alice": str(keys / "alice.pub")},
                    "worker_key": str(keys / "worker.key"),
                },
            }
        )
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config, {})
    assert (
        "worker.claim_lifetime (400s) is shorter than security.max_task_age + 2 x security.max_clock_skew (420s)"
        in str(raised.value)
    )
