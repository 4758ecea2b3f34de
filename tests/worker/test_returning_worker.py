"""A worker that comes back after its jobs were taken over sends nothing of them: no status, record or webhook.

Real broker, real worker processes, real `ansible-playbook`, as in the lost-worker tests. The
worker is frozen (SIGSTOP) long enough for the broker to drop its link and for the group to
take its jobs over; what it does once it runs again (SIGCONT) is what is checked.
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from testing.broker import Broker
from tests.conftest import (
    TERMINAL,
    client_for,
    open_controller,
    processes_mentioning,
    unique_seconds,
    wait_online,
)
from tests.deployment import Deployment
from tests.templates.test_notifications import Receiver, receiving, target
from tests.worker.takeovers import (
    LOST_AFTER,
    TAKEOVER_BOUND,
    config,
    forge,
    hold_jobs,
    marked,
    retained,
    runs,
    settled_once,
    setup,
    wait_sleeping,
)


async def test_a_returning_worker_runs_nothing_again_when_the_takeover_claim_was_replaced_since(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    markers = setup(tmp_path, playbook_dir, deployment)
    frozen = config(tmp_path, broker, playbook_dir, group, "frozen")
    survivor = config(tmp_path, broker, playbook_dir, group, "survivor")
    seconds = unique_seconds(277)
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        deployment.process("run", "-c", str(frozen)) as stopped,
    ):
        await wait_online(client, "frozen")
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with deployment.process("run", "-c", str(survivor)) as alive:
            await wait_online(client, "survivor")
            stopped.process.send_signal(signal.SIGSTOP)
            try:
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
            finally:
                stopped.process.send_signal(signal.SIGCONT)
            with trio.fail_after(30):
                await stopped.wait_for_line(f"task {queued[0]}: taken over by survivor while this worker was away")
            await settled_once(controller, [running, *queued], 30)
            assert await alive.stop() == 0
        assert await stopped.stop() == 0
    assert runs(markers / queued[0]) == 1
    assert [
        s for s in controller.statuses[queued[0]] if s.get("worker_id") == "frozen" and s["state"] in TERMINAL
    ] == []


async def test_a_job_that_ended_while_its_worker_was_frozen_has_no_record_or_webhook_from_it(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    markers = setup(tmp_path, playbook_dir, deployment)
    seconds = unique_seconds(9)
    async with receiving(Receiver()) as receiver:
        hook = target(receiver, on=["success", "failed", "lost"])
        frozen = config(tmp_path, broker, playbook_dir, group, "frozen", notifications=[hook])
        survivor = config(tmp_path, broker, playbook_dir, group, "survivor", notifications=[hook])
        async with (
            open_controller(broker, group) as controller,
            client_for(broker, group) as client,
            deployment.process("run", "-c", str(frozen)) as stopped,
        ):
            await wait_online(client, "frozen")
            async with deployment.process("run", "-c", str(survivor)) as alive:
                await wait_online(client, "survivor")
                job = f"{group}-short"
                await controller.submit({"task_id": job, **marked(markers / job, seconds)})
                await controller.wait_for(job, {"running"})
                await wait_sleeping(seconds)
                stopped.process.send_signal(signal.SIGSTOP)
                try:
                    with trio.fail_after(LOST_AFTER + TAKEOVER_BOUND):
                        await controller.wait_terminal(job)
                        # Its playbook ends meanwhile: the frozen worker finds it over when it wakes.
                        while processes_mentioning(f"sleep {seconds}"):  # noqa: ASYNC110 - /proc has no event
                            await trio.sleep(0.1)
                finally:
                    stopped.process.send_signal(signal.SIGCONT)
                await stopped.wait_for_line(f"task {job}: taken over by survivor while this worker was away")
                ended = await settled_once(controller, [job], 30)
                await receiver.wait_for(1)
                assert await alive.stop() == 0
            assert await stopped.stop() == 0
            record = await retained(broker, f"ansible/{group}/tasks/{job}/record")
    assert ended[job]["error_message"].startswith("worker lost: frozen")
    # The survivor settled it: no record of a success by the frozen worker, one webhook, `lost`.
    assert record is None
    assert [(body["task_id"], body["event"]) for body in receiver.bodies()] == [(job, "lost")]
