"""A worker that comes back after its jobs were taken over sends nothing of them: no status, record or webhook.

Real broker, real worker processes, real `ansible-playbook`, as in the lost-worker tests. The
worker is frozen (SIGSTOP) long enough for the broker to drop its link and for the group to
take its jobs over; what it does once it runs again (SIGCONT) is what is checked.
"""

from __future__ import annotations

from pathlib import Path

import trio

from testing.broker import Broker
from tests.conftest import TERMINAL, unique_seconds
from tests.deployment import Deployment
from tests.templates.test_notifications import Receiver, receiving, target
from tests.worker.takeovers import (
    LOST_AFTER,
    TAKEOVER_BOUND,
    Scene,
    forge,
    hold_jobs,
    marked,
    open_lone_worker,
    open_second_worker,
    paused,
    retained,
    runs,
    settled_once,
    wait_runs_ended,
    wait_sleeping,
)


async def test_a_returning_worker_runs_nothing_again_when_the_takeover_claim_was_replaced_since(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    seconds = unique_seconds(277)
    async with open_lone_worker(scene, "frozen") as (controller, client, stopped):
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with open_second_worker(scene, client, "survivor"):
            with paused(stopped):
                with trio.fail_after(LOST_AFTER + TAKEOVER_BOUND):
                    for task_id in (running, *queued):
                        await controller.wait_terminal(task_id)
                # Since then the claim moved on, as when the survivor hands the job back while
                # draining and a third worker claims it: the takeover claim is retained no more.
                await forge(
                    broker,
                    f"ansible/{group}/tasks/{queued[0]}/claim",
                    {"state": "claimed", "worker_id": "elsewhere", "claim": "c-elsewhere-1"},
                )
            with trio.fail_after(30):
                await stopped.wait_for_line(f"task {queued[0]}: taken over by survivor while this worker was away")
            await settled_once(controller, [running, *queued], 30)
        assert await stopped.stop() == 0
    assert runs(markers / queued[0]) == 1
    assert [
        s for s in controller.statuses[queued[0]] if s.get("worker_id") == "frozen" and s["state"] in TERMINAL
    ] == []


async def test_a_job_that_ended_while_its_worker_was_frozen_has_no_record_or_webhook_from_it(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    seconds = unique_seconds(9)
    async with receiving(Receiver()) as receiver:
        hook = target(receiver, on=["success", "failed", "lost"])
        async with open_lone_worker(scene, "frozen", notifications=[hook]) as (controller, client, stopped):
            async with open_second_worker(scene, client, "survivor", notifications=[hook]):
                job = f"{group}-short"
                await controller.submit({"task_id": job, **marked(markers / job, seconds)})
                await controller.wait_for(job, {"running"})
                await wait_sleeping(seconds)
                with paused(stopped), trio.fail_after(LOST_AFTER + TAKEOVER_BOUND):
                    await controller.wait_terminal(job)
                    # Its playbook ends meanwhile: the frozen worker finds it over when it wakes.
                    await wait_runs_ended(seconds)
                await stopped.wait_for_line(f"task {job}: taken over by survivor while this worker was away")
                ended = await settled_once(controller, [job], 30)
                await receiver.wait_for(1)
            assert await stopped.stop() == 0
            record = await retained(broker, f"ansible/{group}/tasks/{job}/record")
    assert ended[job]["error_message"].startswith("worker lost: frozen")
    # The survivor settled it: no record of a success by the frozen worker, one webhook, `lost`.
    assert record is None
    assert [(body["task_id"], body["event"]) for body in receiver.bodies()] == [(job, "lost")]
