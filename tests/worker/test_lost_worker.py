"""A worker lost for good: the group settles its jobs once, and fences it if it comes back.

Real broker, real worker processes, real `ansible-playbook`. Each job appends a line to a
marker file of its own when it runs, so that runs are counted on disk, and the controller
collects every status on the wire, so that terminal statuses are counted too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import uuid
from pathlib import Path
from typing import Any

import trio

from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.claims import new_claim_id
from ansible_worker.protocol.signing import Signer
from testing.broker import Broker
from tests.conftest import (
    TERMINAL,
    Controller,
    client_for,
    open_controller,
    processes_mentioning,
    unique_seconds,
    wait_online,
    worker_config,
)
from tests.deployment import Deployment, lane

HEARTBEAT = 1
LOST_AFTER = 6
# How long after `lost_after` a takeover may take here (the look every second, the
# takeover's round trips, a playbook run on a loaded machine).
TAKEOVER_BOUND = 40

MARKED_SLEEP = """\
- name: Mark the run, then sleep
  hosts: host1
  gather_facts: false
  tasks:
    - name: Mark the run
      ansible.builtin.shell: echo ran >> "$MARKER"
      environment:
        MARKER: "{{ marker }}"
      changed_when: true
    - name: Sleep for a while
      ansible.builtin.command: "sleep {{ seconds }}"
"""


def marked(marker: Path, seconds: float | str = 0) -> dict[str, Any]:
    """A job that appends to `marker` when it runs, then sleeps `seconds`."""
    return {
        "playbook": "marked_sleep.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"marker": str(marker), "seconds": str(seconds)},
    }


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def terminal_statuses(controller: Controller, task_id: str) -> list[dict[str, Any]]:
    return [status for status in controller.statuses.get(task_id, []) if status["state"] in TERMINAL]


def config(tmp_path: Path, broker: Broker, playbook_dir: Path, group: str, worker_id: str, **worker: Any) -> Path:
    return worker_config(
        tmp_path / f"{worker_id}.json",
        broker,
        playbook_dir,
        group,
        worker_id=worker_id,
        heartbeat_interval=HEARTBEAT,
        lost_after=LOST_AFTER,
        status_interval=0.1,
        **worker,
    )


def setup(tmp_path: Path, playbook_dir: Path, deployment: Deployment) -> Path:
    (playbook_dir / "marked_sleep.yml").write_text(MARKED_SLEEP)
    markers = tmp_path / "markers"
    markers.mkdir()
    return deployment.give(markers)


async def wait_sleeping(seconds: str) -> list[int]:
    """The pids of the job's `sleep`, once it runs."""
    with trio.fail_after(60):
        while not (found := processes_mentioning(f"sleep {seconds}")):  # noqa: ASYNC110 - /proc has no event
            await trio.sleep(0.05)
    return [int(line.split(":", 1)[0]) for line in found]


async def hold_jobs(controller: Controller, markers: Path, group: str, seconds: str) -> tuple[str, list[str]]:
    """One job running on the only worker online, and two waiting behind it."""
    running = f"{group}-running"
    await controller.submit({"task_id": running, **marked(markers / running, seconds)})
    await controller.wait_for(running, {"running"})
    await wait_sleeping(seconds)
    # Its counts so far are out: the mark changed something.
    with trio.fail_after(30):
        while not any(s.get("tasks_changed") == 1 for s in controller.statuses[running]):  # noqa: ASYNC110
            await trio.sleep(0.05)
    queued = [f"{group}-queued-{n}" for n in (1, 2)]
    for task_id in queued:
        await controller.submit({"task_id": task_id, **marked(markers / task_id)})
        await controller.wait_for(task_id, {"queued"})
    return running, queued


def kill_for_good(pid: int, seconds: str) -> None:
    """SIGKILL the worker and its job's whole process group, as a node that dies takes them all."""
    for line in processes_mentioning(f"sleep {seconds}"):
        with_pid = int(line.split(":", 1)[0])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(with_pid), signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


async def settled_once(controller: Controller, task_ids: list[str], within: float) -> dict[str, dict[str, Any]]:
    """Each job's terminal status, once all have one; then a moment more, to see that none comes twice."""
    with trio.fail_after(within):
        ended = {task_id: await controller.wait_terminal(task_id, within) for task_id in task_ids}
    # Long enough for a second survivor, or a fenced worker, to publish what it should not.
    await trio.sleep(LOST_AFTER)
    await controller.sync()
    for task_id in task_ids:
        assert len(terminal_statuses(controller, task_id)) == 1, controller.statuses[task_id]
    return ended


@lane
async def test_a_worker_lost_for_good_has_its_started_job_failed_and_its_queued_jobs_run_once_elsewhere(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    markers = setup(tmp_path, playbook_dir, deployment)
    state_dir = tmp_path / "doomed-state"
    state_dir.mkdir()
    doomed = config(tmp_path, broker, playbook_dir, group, "doomed", state_dir=str(state_dir))
    survivor = config(tmp_path, broker, playbook_dir, group, "survivor")
    seconds = unique_seconds(271)
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        deployment.process("run", "-c", str(doomed)) as lost,
    ):
        await wait_online(client, "doomed")
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with deployment.process("run", "-c", str(survivor)) as alive:
            await wait_online(client, "survivor")
            kill_for_good(lost.process.pid, seconds)
            shutil.rmtree(state_dir)
            ended = await settled_once(controller, [running, *queued], LOST_AFTER + TAKEOVER_BOUND)
            assert await alive.stop() == 0
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


async def read_retained_copies(broker: Broker, group: str, task_ids: list[str]) -> dict[str, bytes]:
    """The request copies the broker retains for `task_ids`."""
    found: dict[str, bytes] = {}
    for task_id in task_ids:
        copy = await retained(broker, f"ansible/{group}/tasks/{task_id}/request")
        if copy is not None:
            found[task_id] = copy
    return found


async def test_a_frozen_worker_that_comes_back_after_the_takeover_publishes_nothing_and_ends_its_job(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    markers = setup(tmp_path, playbook_dir, deployment)
    frozen = config(tmp_path, broker, playbook_dir, group, "frozen")
    survivor = config(tmp_path, broker, playbook_dir, group, "survivor")
    seconds = unique_seconds(272)
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        deployment.process("run", "-c", str(frozen)) as stopped,
    ):
        await wait_online(client, "frozen")
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with deployment.process("run", "-c", str(survivor)) as alive:
            await wait_online(client, "survivor")
            # The worker alone: its job's processes go on meanwhile, as under a frozen VM's
            # hypervisor they would not, which is the harder case here.
            stopped.process.send_signal(signal.SIGSTOP)
            try:
                with trio.fail_after(LOST_AFTER + TAKEOVER_BOUND):
                    await controller.wait_terminal(running)
                    for task_id in queued:
                        await controller.wait_terminal(task_id)
            finally:
                stopped.process.send_signal(signal.SIGCONT)
            with trio.fail_after(30):
                await stopped.wait_for_line(f"task {running}: taken over by survivor while this worker was away")
            with trio.fail_after(30):
                while processes_mentioning(f"sleep {seconds}"):  # noqa: ASYNC110 - /proc has no event
                    await trio.sleep(0.1)
            ended = await settled_once(controller, [running, *queued], 30)
            assert await alive.stop() == 0
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
    markers = setup(tmp_path, playbook_dir, deployment)
    state_dir = tmp_path / "phoenix-state"
    state_dir.mkdir()
    phoenix = config(tmp_path, broker, playbook_dir, group, "phoenix", state_dir=str(state_dir))
    survivor = config(tmp_path, broker, playbook_dir, group, "survivor")
    seconds = unique_seconds(273)
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        deployment.process("run", "-c", str(phoenix)) as killed,
    ):
        await wait_online(client, "phoenix")
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with deployment.process("run", "-c", str(survivor)) as alive:
            await wait_online(client, "survivor")
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
                with trio.fail_after(30):
                    while processes_mentioning(f"sleep {seconds}"):  # noqa: ASYNC110 - /proc has no event
                        await trio.sleep(0.1)
                ended = await settled_once(controller, [running, *queued], 30)
                assert await restarted.stop() == 0
            assert await alive.stop() == 0
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
        markers = setup(tmp_path, playbook_dir, deployment)
        steady = config(tmp_path, broker, playbook_dir, group, "steady")
        other = config(tmp_path, broker, playbook_dir, group, "other")
        seconds = unique_seconds(14)
        async with client_for(broker, group) as client, deployment.process("run", "-c", str(steady)) as first:
            async with open_controller(broker, group) as controller:
                await wait_online(client, "steady")
                running, queued = await hold_jobs(controller, markers, group, seconds)
            async with deployment.process("run", "-c", str(other)) as second:
                await wait_online(client, "other")
                broker.stop()
                await trio.sleep(LOST_AFTER + 3)
                broker.start()
                async with open_controller(broker, group) as controller:
                    with trio.fail_after(120):
                        ended = {
                            task_id: await controller.wait_terminal(task_id, 120) for task_id in (running, *queued)
                        }
                assert await second.stop() == 0
            assert await first.stop() == 0
    finally:
        broker.stop()
    for task_id, status in ended.items():
        assert status["state"] == "success", status
        assert status["worker_id"] == "steady"
        assert status.get("taken_over_by") is None
        assert status.get("taken_over_from") is None
        assert runs(markers / task_id) == 1


async def test_a_worker_late_by_less_than_lost_after_is_not_reaped(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    markers = setup(tmp_path, playbook_dir, deployment)
    slow = config(tmp_path, broker, playbook_dir, group, "slow")
    other = config(tmp_path, broker, playbook_dir, group, "other")
    seconds = unique_seconds(20)
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        deployment.process("run", "-c", str(slow)) as busy,
    ):
        await wait_online(client, "slow")
        running, queued = await hold_jobs(controller, markers, group, seconds)
        async with deployment.process("run", "-c", str(other)) as second:
            await wait_online(client, "other")
            # Not scheduled at all for most of lost_after: later than any busy CPU makes it.
            busy.process.send_signal(signal.SIGSTOP)
            await trio.sleep(LOST_AFTER - 2)
            busy.process.send_signal(signal.SIGCONT)
            with trio.fail_after(120):
                ended = {task_id: await controller.wait_terminal(task_id, 120) for task_id in (running, *queued)}
            assert await second.stop() == 0
        assert await busy.stop() == 0
    for task_id, status in ended.items():
        assert status["state"] == "success", status
        assert status["worker_id"] == "slow"
        assert status.get("taken_over_by") is None
        assert status.get("taken_over_from") is None
        assert runs(markers / task_id) == 1


async def retained(broker: Broker, topic: str) -> bytes | None:
    """What the broker retains on `topic` now."""
    reader = "reader-" + uuid.uuid4().hex[:8]
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id=reader)
    found: bytes | None = None
    async with open_mqtt_link(options) as link:
        sync = f"{reader}/sync"
        await link.subscribe(topic, 1)
        await link.subscribe(sync, 1)
        await link.publish(sync, b"end", qos=1)
        with trio.fail_after(10):
            async for message in link.messages():
                if message.topic == sync:
                    break
                found = message.payload or None
    return found


async def forge(broker: Broker, topic: str, document: dict[str, Any], *, retain: bool = True) -> None:
    """Publish `document` on `topic` as someone who may write every topic of the group, but holds no worker key."""
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="forger")
    async with open_mqtt_link(options) as link:
        await link.publish(topic, json.dumps(document).encode(), qos=1, retain=retain)


async def test_signed_a_forged_presence_request_copy_or_takeover_changes_nothing(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment, keys: Path
) -> None:
    markers = setup(tmp_path, playbook_dir, deployment)
    security = {
        "require_signed_tasks": True,
        "trusted_keys": {"alice": str(keys / "alice.pub")},
        "worker_key": str(keys / "worker.key"),
    }
    honest = config(tmp_path, broker, playbook_dir, group, "honest")
    survivor = config(tmp_path, broker, playbook_dir, group, "survivor")
    for path in (honest, survivor):
        document = json.loads(path.read_text())
        path.write_text(json.dumps({**document, "security": security}))
    topics = f"ansible/{group}"
    seconds = unique_seconds(274)
    alice, mallory = Signer.from_file(keys / "alice.key"), Signer.from_file(keys / "mallory.key")
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group, signer=alice) as client,
        deployment.process("run", "-c", str(honest)) as lost,
    ):
        await wait_online(client, "honest")
        running, queued = f"{group}-running", f"{group}-queued"
        await client.submit({"task_id": running, **marked(markers / running, seconds)})
        await controller.wait_for(running, {"running"})
        await wait_sleeping(seconds)
        await client.submit({"task_id": queued, **marked(markers / queued)})
        await controller.wait_for(queued, {"queued"})
        async with deployment.process("run", "-c", str(survivor)) as alive:
            await wait_online(client, "survivor")
            # A forged will, and a forged takeover of the running job: the honest worker is alive.
            await forge(broker, f"{topics}/workers/honest", {"state": "offline", "stopped": "lost"})
            claim = json.loads(await retained(broker, f"{topics}/tasks/{running}/claim") or b"{}")
            takeover = {
                "state": "claimed",
                "worker_id": "survivor",
                "claim": new_claim_id(),
                "takes_over": claim["claim"],
                "lost_worker": "honest",
                "expires_at": "2099-01-01T00:00:00.000Z",
            }
            await forge(
                broker, f"{topics}/tasks/{running}/claim", mallory.sign(f"{topics}/tasks/{running}/claim", takeover)
            )
            # A request the controller never signed, in place of the queued job's copy.
            forged_job = {"task_id": queued, **marked(markers / "forged")}
            await forge(broker, f"{topics}/tasks/{queued}/request", mallory.sign(f"{topics}/tasks", forged_job))
            await trio.sleep(LOST_AFTER + 3)
            await controller.sync()
            assert terminal_statuses(controller, running) == []
            assert all(status.get("worker_id") in (None, "honest") for status in controller.statuses[running])
            # Now lost for good: the survivor settles both jobs, from what was genuinely signed.
            kill_for_good(lost.process.pid, seconds)
            ended = await settled_once(controller, [running, queued], LOST_AFTER + TAKEOVER_BOUND)
            assert await alive.stop() == 0
    assert ended[running]["error_message"].startswith("worker lost: honest")
    assert ended[running]["taken_over_by"] == "survivor"
    assert ended[queued]["state"] == "success"
    assert ended[queued]["taken_over_from"] == "honest"
    assert runs(markers / queued) == 1
    assert runs(markers / "forged") == 0
    assert runs(markers / running) == 1


async def test_a_queued_job_whose_copy_is_gone_ends_failed_and_never_stays_queued(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    markers = setup(tmp_path, playbook_dir, deployment)
    doomed = config(tmp_path, broker, playbook_dir, group, "doomed")
    survivor = config(tmp_path, broker, playbook_dir, group, "survivor")
    seconds = unique_seconds(275)
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        deployment.process("run", "-c", str(doomed)) as lost,
    ):
        await wait_online(client, "doomed")
        running, queued = await hold_jobs(controller, markers, group, seconds)
        # Someone who may write the request topics deletes one copy: the group cannot run it.
        await forge_clear(broker, f"ansible/{group}/tasks/{queued[0]}/request")
        async with deployment.process("run", "-c", str(survivor)) as alive:
            await wait_online(client, "survivor")
            kill_for_good(lost.process.pid, seconds)
            ended = await settled_once(controller, [running, *queued], LOST_AFTER + TAKEOVER_BOUND)
            assert await alive.stop() == 0
    gone = ended[queued[0]]
    assert gone["state"] == "failed"
    assert gone["error_message"].startswith("worker lost: doomed (last heard 20")
    assert gone["error_message"].endswith("it had not started, and was not run here: no request copy matches its claim")
    assert gone["taken_over_by"] == "survivor"
    assert runs(markers / queued[0]) == 0
    assert ended[queued[1]]["state"] == "success"
    assert runs(markers / queued[1]) == 1


async def forge_clear(broker: Broker, topic: str) -> None:
    """Delete the message retained on `topic`, as anyone who may write it can."""
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="eraser")
    async with open_mqtt_link(options) as link:
        await link.publish(topic, b"", qos=1, retain=True)
