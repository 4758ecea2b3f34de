"""A draining worker hands its queued launches and ticks back; the worker that takes them expands them again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import trio
import yaml

from ansible_worker.worker.service import Worker
from tests.conftest import Broker, client_for, make_settings, open_controller
from tests.templates.test_launch import TEMPLATES
from tests.templates.test_schedules import START, SteppedClock
from tests.worker.test_resilience import sleeper, wait_for_peer


async def test_queued_launches_and_ticks_are_handed_back_and_run_elsewhere(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    tick_template: dict[str, Any] = {
        "playbook": "quick.yml",
        "inventory": "one_host.ini",
        "schedule": [{"cron": "* * * * *"}],
    }
    templates = {"templates": {**TEMPLATES["templates"], "tick": tick_template}}
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump(templates))
    clock = SteppedClock(START)
    leaving_settings = make_settings(
        broker.port, playbook_dir, group, templates="templates.yml", worker_id="leaving", drain_timeout=60
    )
    staying_settings = make_settings(broker.port, playbook_dir, group, templates="templates.yml", worker_id="staying")
    tick = START + timedelta(seconds=30)
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        trio.open_nursery() as nursery,
    ):
        leaving = Worker(leaving_settings, clock=clock)
        await nursery.start(leaving.serve)
        assert leaving.scheduler is not None
        with trio.fail_after(15):
            await leaving.scheduler.ready.wait()
        # Its one slot busy: what comes next waits in its queue.
        busy = await client.submit({"task_id": "busy", **sleeper(3)})
        async for status in busy.statuses():
            if status["state"] == "running":
                break
        await client.submit({"task_id": "launched", "template": "greet", "extra_vars": {"greeting": "handed on"}})
        clock.move_to(tick)
        tick_id = f"tick.{leaving.scheduler.entries[-1].entry.key}.{tick:%Y%m%dT%H%M%SZ}"
        await controller.wait_for(tick_id, {"queued"})
        await controller.wait_for("launched", {"queued"})
        staying = Worker(staying_settings, clock=clock)
        await nursery.start(staying.serve)
        await wait_for_peer(leaving, "staying")
        leaving.request_shutdown()
        launched = await controller.wait_terminal("launched")
        ticked = await controller.wait_terminal(tick_id)
        await controller.wait_terminal("busy")
        staying.request_shutdown()
    for final in (launched, ticked):
        assert final["state"] == "success", final
        assert final["worker_id"] == "staying"
        assert any(status.get("handed_back_by") == "leaving" for status in controller.statuses[final["task_id"]])
    # Expanded again where it ran: its template's fields, its secret answer masked there too.
    assert launched["template"] == "greet"
    assert launched["output"]["greeting"] == "********"
    assert "handed on" not in str(controller.statuses["launched"])
