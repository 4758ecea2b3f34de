"""What the group's takeovers cannot be made to do: run a forged request, reap a live worker, or leave a job queued.

Real broker, real worker processes, real `ansible-playbook`, as in the lost-worker tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from ansible_worker.protocol.claims import new_claim_id
from ansible_worker.protocol.signing import Signer
from testing.broker import Broker
from tests.conftest import unique_seconds
from tests.deployment import Deployment
from tests.worker.takeovers import (
    LOST_AFTER,
    TAKEOVER_BOUND,
    Scene,
    forge,
    forge_clear,
    hold_jobs,
    kill_for_good,
    marked,
    open_lone_worker,
    open_second_worker,
    retained,
    runs,
    settled_once,
    wait_sleeping,
)


def signed(path: Path, keys: Path) -> Path:
    """The worker settings at `path`, with jobs signed by alice and claims by the workers' key."""
    security = {
        "require_signed_tasks": True,
        "trusted_keys": {"alice": str(keys / "alice.pub")},
        "worker_key": str(keys / "worker.key"),
    }
    path.write_text(json.dumps({**json.loads(path.read_text()), "security": security}))
    return path


async def test_signed_a_forged_presence_request_copy_or_takeover_changes_nothing(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment, keys: Path
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    honest = signed(scene.settings("honest"), keys)
    survivor = signed(scene.settings("survivor"), keys)
    topics = f"ansible/{group}"
    seconds = unique_seconds(274)
    alice, mallory = Signer.from_file(keys / "alice.key"), Signer.from_file(keys / "mallory.key")
    async with open_lone_worker(scene, "honest", settings=honest, signer=alice) as (controller, client, lost):
        running, queued = f"{group}-running", f"{group}-queued"
        await client.submit({"task_id": running, **marked(markers / running, seconds)})
        await controller.wait_for(running, {"running"})
        await wait_sleeping(seconds)
        await client.submit({"task_id": queued, **marked(markers / queued)})
        await controller.wait_for(queued, {"queued"})
        async with open_second_worker(scene, client, "survivor", settings=survivor):
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
            assert controller.terminal_statuses(running) == []
            assert all(status.get("worker_id") in (None, "honest") for status in controller.statuses[running])
            # Now lost for good: the survivor settles both jobs, from what was genuinely signed.
            kill_for_good(lost.process.pid, seconds)
            ended = await settled_once(controller, [running, queued], LOST_AFTER + TAKEOVER_BOUND)
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
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    markers = scene.markers()
    seconds = unique_seconds(275)
    async with open_lone_worker(scene, "doomed") as (controller, client, lost):
        running, queued = await hold_jobs(controller, markers, group, seconds)
        # Someone who may write the request topics deletes one copy: the group cannot run it.
        await forge_clear(broker, f"ansible/{group}/tasks/{queued[0]}/request")
        async with open_second_worker(scene, client, "survivor"):
            kill_for_good(lost.process.pid, seconds)
            ended = await settled_once(controller, [running, *queued], LOST_AFTER + TAKEOVER_BOUND)
    gone = ended[queued[0]]
    assert gone["state"] == "failed"
    assert gone["error_message"].startswith("worker lost: doomed (last heard 20")
    assert gone["error_message"].endswith("it had not started, and was not run here: no request copy matches its claim")
    assert gone["taken_over_by"] == "survivor"
    assert runs(markers / queued[0]) == 0
    assert ended[queued[1]]["state"] == "success"
    assert runs(markers / queued[1]) == 1
