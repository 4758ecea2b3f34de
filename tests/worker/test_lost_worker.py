"""A worker lost for good: the group settles its jobs once, and fences it if it comes back.

Real broker, real worker processes, real `ansible-playbook`. Each job appends a line to a
marker file of its own when it runs, so that runs are counted on disk, and the controller
collects every status on the wire, so that terminal statuses are counted too.
"""

from __future__ import annotations

import hmac
import shutil
import signal
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path

import trio

from ansible_worker.protocol.timestamps import parse_utc
from testing.broker import Broker
from tests.conftest import (
    TERMINAL,
    client_for,
    open_controller,
    processes_mentioning,
    unique_seconds,
    wait_online,
)
from tests.deployment import Deployment, unprivileged_lane
from tests.templates.test_notifications import SECRET, Receiver, receiving, target
from tests.worker.takeovers import (
    LOST_AFTER,
    TAKEOVER_BOUND,
    Scene,
    hold_jobs,
    kill_for_good,
    marked,
    open_lone_worker,
    open_second_worker,
    paused,
    read_retained_copies,
    runs,
    settled_once,
    wait_runs_ended,
    wait_sleeping,
)

# A broker outage longer than lost_after, and than the reconnection backoff takes to grow to its longest wait.
OUTAGE = 35


@unprivileged_lane
async def test_a_worker_lost_for_good_has_its_started_job_failed_and_its_queued_jobs_run_once_elsewhere(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    state_dir = tmp_path / "doomed-state"
    state_dir.mkdir()
    seconds = unique_seconds(271)
    async with open_lone_worker(scene, "doomed", state_dir=str(state_dir)) as (controller, client, lost):
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with open_second_worker(scene, client, "survivor"):
            kill_for_good(lost.process.pid, seconds)
            shutil.rmtree(state_dir)
            ended = await settled_once(controller, [running, *queued], LOST_AFTER + TAKEOVER_BOUND)
    failed = ended[running]
    assert failed["state"] == "failed"
    assert failed["error_message"].startswith("worker lost: doomed (last heard 20")
    assert failed["taken_over_by"] == "survivor"
    # The counts it last published.
    assert (failed["tasks_changed"], failed["tasks_total"]) == (1, 1)
    assert runs(markers / running) == 1
    for task_id in queued:
        assert ended[task_id]["state"] == "success", ended[task_id]
        assert ended[task_id]["worker_id"] == "survivor"
        assert ended[task_id]["taken_over_from"] == "doomed"
        assert runs(markers / task_id) == 1
    # Once settled, nothing of them is left on the broker's request topics.
    copies = await read_retained_copies(broker, group, [running, *queued])
    assert copies == {}


async def test_a_frozen_worker_that_comes_back_after_the_takeover_publishes_nothing_and_ends_its_job(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    seconds = unique_seconds(272)
    async with open_lone_worker(scene, "frozen") as (controller, client, stopped):
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with open_second_worker(scene, client, "survivor"):
            # The worker alone: its job's processes go on meanwhile, as under a frozen VM's
            # hypervisor they would not, which is the harder case here.
            with paused(stopped), trio.fail_after(LOST_AFTER + TAKEOVER_BOUND):
                await controller.wait_terminal(running)
                for task_id in queued:
                    await controller.wait_terminal(task_id)
            with trio.fail_after(30):
                await stopped.wait_for_line(f"task {running}: taken over by survivor while this worker was away")
            await wait_runs_ended(seconds)
            ended = await settled_once(controller, [running, *queued], 30)
        assert await stopped.stop() == 0
    after_takeover = [
        status
        for task_id in (running, *queued)
        for status in controller.statuses[task_id]
        if status.get("worker_id") == "frozen" and status["state"] in TERMINAL
    ]
    assert after_takeover == []
    assert ended[running]["error_message"].startswith("worker lost: frozen")
    assert runs(markers / running) == 1
    for task_id in queued:
        assert ended[task_id]["state"] == "success"
        assert ended[task_id]["taken_over_from"] == "frozen"
        assert runs(markers / task_id) == 1


async def test_a_worker_restarted_on_its_old_state_dir_after_the_takeover_runs_and_publishes_nothing_again(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    state_dir = tmp_path / "phoenix-state"
    state_dir.mkdir()
    phoenix = scene.settings("phoenix", state_dir=str(state_dir))
    seconds = unique_seconds(273)
    async with open_lone_worker(scene, "phoenix", settings=phoenix) as (controller, client, killed):
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with open_second_worker(scene, client, "survivor"):
            # The worker alone: its Ansible run outlives it, and its journal stays.
            killed.process.send_signal(signal.SIGKILL)
            with trio.fail_after(10):
                await killed.process.wait()
            with trio.fail_after(LOST_AFTER + TAKEOVER_BOUND):
                for task_id in (running, *queued):
                    await controller.wait_terminal(task_id)
            assert processes_mentioning(f"sleep {seconds}"), "the scenario needs the old run still alive"
            async with deployment.process("run", "-c", str(phoenix)) as restarted:
                await restarted.wait_for_line(f"task {running}: taken over by survivor")
                await wait_runs_ended(seconds)
                ended = await settled_once(controller, [running, *queued], 30)
                assert await restarted.stop() == 0
    assert ended[running]["error_message"].startswith("worker lost: phoenix")
    for task_id in (running, *queued):
        assert runs(markers / task_id) == 1
        assert all(
            status.get("error_message") != "interrupted: worker restarted" for status in controller.statuses[task_id]
        )


async def test_a_broker_restart_longer_than_lost_after_reaps_nobody(
    playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    directory = tmp_path / "persistent-broker"
    directory.mkdir()
    broker = Broker(directory, persistence=directory / "db")
    broker.start()
    try:
        scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
        markers = scene.markers()
        steady = scene.settings("steady")
        seconds = unique_seconds(50)
        async with client_for(broker, group) as client, deployment.process("run", "-c", str(steady)) as first:
            async with open_controller(broker, group) as controller:
                await wait_online(client, "steady")
                running, queued = await hold_jobs(controller, markers, group, seconds)
            async with open_second_worker(scene, client, "other") as second:
                broker.stop()
                # Long enough for the reconnection backoff to reach its longest wait.
                await trio.sleep(OUTAGE)
                broker.start()
                back = datetime.now(UTC)
                async with open_controller(broker, group) as controller:
                    with trio.fail_after(120):
                        ended = {
                            task_id: await controller.wait_terminal(task_id, 120) for task_id in (running, *queued)
                        }
            assert await first.stop() == 0
    finally:
        broker.stop()
    for task_id, status in ended.items():
        assert status["state"] == "success", status
        assert status["worker_id"] == "steady"
        assert status.get("taken_over_by") is None
        assert status.get("taken_over_from") is None
        assert runs(markers / task_id) == 1
    # Every worker was back within lost_after / 4 of the broker (and a margin for connecting):
    # no reconnection spread, however long the outage, makes one look lost to another.
    for process in (first, second):
        returns = [line[:24] for line in process.lines if "reconnected to broker" in line]
        assert returns, process.lines[-30:]
        delay = (parse_utc(returns[-1]) - back).total_seconds()
        assert delay < LOST_AFTER / 2, (delay, process.lines[-30:])


async def test_a_worker_late_by_less_than_lost_after_is_not_reaped(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    seconds = unique_seconds(20)
    async with open_lone_worker(scene, "slow") as (controller, client, busy):
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with open_second_worker(scene, client, "other"):
            # Not scheduled at all for most of lost_after: later than any busy CPU makes it.
            with paused(busy):
                await trio.sleep(LOST_AFTER - 2)
            with trio.fail_after(120):
                ended = {task_id: await controller.wait_terminal(task_id, 120) for task_id in (running, *queued)}
        assert await busy.stop() == 0
    for task_id, status in ended.items():
        assert status["state"] == "success", status
        assert status["worker_id"] == "slow"
        assert status.get("taken_over_by") is None
        assert status.get("taken_over_from") is None
        assert runs(markers / task_id) == 1


async def test_a_job_settled_for_a_lost_worker_notifies_lost_once(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    seconds = unique_seconds(276)
    async with receiving(Receiver()) as receiver:
        hook = target(receiver, on=["lost", "failed"])
        async with open_lone_worker(scene, "doomed") as (controller, client, lost):
            running = f"{group}-running"
            await controller.submit({"task_id": running, **marked(markers / running, seconds)})
            await controller.wait_for(running, {"running"})
            await wait_sleeping(seconds)
            async with open_second_worker(scene, client, "survivor", notifications=[hook]):
                kill_for_good(lost.process.pid, seconds)
                await settled_once(controller, [running], LOST_AFTER + TAKEOVER_BOUND)
                await receiver.wait_for(1)
    # `lost`, not `failed`, and only once, signed as every notification is.
    assert [(body["task_id"], body["event"]) for body in receiver.bodies()] == [(running, "lost")]
    ((headers, body, _),) = receiver.requests
    assert headers["x-ansible-worker-signature"] == "sha256=" + hmac.new(SECRET.encode(), body, sha256).hexdigest()
