"""Group-wide host locks: two jobs on one host never run at once on any workers of the group, and a waiting job says why.

Real broker, real Ansible, two workers. Each job's playbook writes when it started and ended;
the tests compare those times, not what the workers say of themselves. The tests of a lost
holder run it as a worker process of its own, so that it can be stopped, resumed and killed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import (
    TERMINAL,
    Controller,
    WorkerProcess,
    make_settings,
    open_controller,
    processes_mentioning,
    running_worker,
    unique_seconds,
)
from tests.deployment import Deployment
from tests.worker.takeovers import (
    LOST_AFTER,
    TAKEOVER_BOUND,
    Scene,
    open_lone_worker,
    open_second_worker,
    paused,
    wait_runs_ended,
)

# Holds its hosts for `seconds`; writes <name>.start and <name>.end (epoch seconds) once per run.
STAMP = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Start
      ansible.builtin.shell: date +%s.%N > {{ log_dir }}/{{ name }}.start
      run_once: true
    - name: Hold the hosts
      ansible.builtin.command: sleep {{ seconds }}
    - name: End
      ansible.builtin.shell: date +%s.%N > {{ log_dir }}/{{ name }}.end
      run_once: true
"""
HOSTS = "".join(
    f'web{n} ansible_connection=local ansible_python_interpreter="{{{{ ansible_playbook_python }}}}"\n'
    for n in range(1, 5)
)


def with_stamp_playbooks(playbook_dir: Path) -> Path:
    """`playbook_dir` with stamp.yml and the four web hosts of web.ini."""
    (playbook_dir / "stamp.yml").write_text(STAMP)
    (playbook_dir / "web.ini").write_text(HOSTS)
    return playbook_dir


@pytest.fixture
def playbook_dir(playbook_dir: Path) -> Path:
    return with_stamp_playbooks(playbook_dir)


def stamp_job(name: str, stamps: Path, *, limit: str | None, seconds: float | str = 3, **fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "task_id": name,
        "playbook": "stamp.yml",
        "inventory": "web.ini",
        "extra_vars": {"log_dir": str(stamps), "name": name, "seconds": seconds},
        **fields,
    }
    if limit is not None:
        job["limit"] = limit
    return job


def interval(name: str, stamps: Path) -> tuple[float, float]:
    return float((stamps / f"{name}.start").read_text()), float((stamps / f"{name}.end").read_text())


def overlap(first: tuple[float, float], second: tuple[float, float]) -> bool:
    return first[0] < second[1] and second[0] < first[1]


async def waiting_status(controller: Controller, task_id: str, key: str) -> dict[str, Any]:
    """The first status of `task_id` whose waiting_for names `key`."""
    with trio.fail_after(60):
        while True:
            for status in controller.statuses.get(task_id, []):
                if key in (status.get("waiting_for") or {}):
                    return status
            await controller._changed.wait()


async def test_jobs_on_one_host_never_overlap_while_others_run_beside_them(
    broker: Any, playbook_dir: Path, group: str, stamps: Path
) -> None:
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="a", concurrency=3, host_locks=True)),
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="b", concurrency=3, host_locks=True)),
    ):
        await controller.submit(stamp_job("first", stamps, limit="web1:web2", seconds=4))
        first_running = await controller.wait_for("first", {"running"})
        # web2 is taken by "first": "second" waits; "beside" wants web4 alone and runs at once.
        await controller.submit(stamp_job("second", stamps, limit="web2:web3"))
        await controller.submit(stamp_job("beside", stamps, limit="web4"))
        waiting = await waiting_status(controller, "second", "locks")
        finals = {name: await controller.wait_terminal(name) for name in ("first", "second", "beside")}
    assert waiting["state"] == "queued"
    assert waiting["waiting_for"]["locks"] == ["web2"]
    assert waiting["waiting_for"]["held_by"] == f"first on {first_running['worker_id']}"
    assert {name: status["state"] for name, status in finals.items()} == dict.fromkeys(finals, "success")
    assert not overlap(interval("first", stamps), interval("second", stamps))
    assert overlap(interval("first", stamps), interval("beside", stamps))
    # Running, a job no longer says it waits.
    assert all(
        status.get("waiting_for") is None for status in controller.statuses["second"] if status["state"] != "queued"
    )


async def test_explicit_locks_and_none(broker: Any, playbook_dir: Path, group: str, stamps: Path) -> None:
    """`locks` replaces the inventory's hosts; `locks: []` takes none, so it runs beside a holder of its hosts."""
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="a", concurrency=3, host_locks=True)),
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="b", concurrency=3, host_locks=True)),
    ):
        await controller.submit(stamp_job("db", stamps, limit="web1", locks=["database"], seconds=4))
        await controller.wait_for("db", {"running"})
        await controller.submit(stamp_job("migrate", stamps, limit="web3", locks=["database"]))
        await controller.submit(stamp_job("free", stamps, limit="web1", locks=[]))
        waiting = await waiting_status(controller, "migrate", "locks")
        for name in ("db", "migrate", "free"):
            assert (await controller.wait_terminal(name))["state"] == "success"
    assert waiting["waiting_for"]["locks"] == ["database"]
    assert not overlap(interval("db", stamps), interval("migrate", stamps))
    assert overlap(interval("db", stamps), interval("free", stamps))


async def test_max_concurrent_holds_across_two_workers(
    broker: Any, playbook_dir: Path, group: str, stamps: Path
) -> None:
    names = [f"capped{n}" for n in range(4)]
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="a", concurrency=4, host_locks=True)),
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="b", concurrency=4, host_locks=True)),
    ):
        for index, name in enumerate(names):
            job = stamp_job(name, stamps, limit=f"web{index + 1}", max_concurrent=2, seconds=3)
            await controller.submit(job)
        finals = [await controller.wait_terminal(name, within=120) for name in names]
    assert [final["state"] for final in finals] == ["success"] * 4
    intervals = [interval(name, stamps) for name in names]
    # At every job's start, at most two jobs of the playbook are running: it and one other.
    for start, _ in intervals:
        assert sum(begin <= start < end for begin, end in intervals) <= 2
    # And two did run at once: a cap, not a queue of one.
    assert any(overlap(one, other) for index, one in enumerate(intervals) for other in intervals[index + 1 :])
    waited = [status for name in names for status in controller.statuses[name] if status.get("waiting_for")]
    assert any(status["waiting_for"].get("max_concurrent") == 2 for status in waited)


# A holder stopped this long has its will sent (after 1.5 x the 5 s keepalive) and its link
# closed well within the stop: a host given away on the will, or on any lapse shorter than
# the stop, lets `next` start with time to spare. `lost_after` is longer by what the holder
# needs to come back (wake, reconnect, a heartbeat) on a loaded machine.
STOPPED_FOR = 16
PATIENT_LOST_AFTER = STOPPED_FOR + 25


@asynccontextmanager
async def open_next_behind_a_holder(
    scene: Scene, stamps: Path, seconds: str, *, lost_after: float
) -> AsyncIterator[tuple[Controller, WorkerProcess]]:
    """Job `holder` on web2 for `seconds` in worker `holder-w`, drained; job `next` on web2 waiting for it in `waiter-w`.

    Both workers take host locks (the default) and are lost after `lost_after`. Yields the
    controller and `holder-w`; once the block is done, `waiter-w` must stop cleanly.
    """
    workers: dict[str, Any] = {"lost_after": lost_after, "drain_timeout": 600, "host_locks": True}
    async with open_lone_worker(scene, "holder-w", **workers) as (controller, client, holder):
        await controller.submit(stamp_job("holder", stamps, limit="web2", seconds=seconds))
        running = await controller.wait_for("holder", {"running"})
        assert running["worker_id"] == "holder-w"
        # Draining, the holder keeps its job (and locks) and takes no more: `next` goes to `waiter-w`.
        holder.process.send_signal(signal.SIGTERM)
        await holder.wait_for_line("draining")
        async with open_second_worker(scene, client, "waiter-w", **workers):
            await controller.submit(stamp_job("next", stamps, limit="web2", seconds=0))
            waiting = await waiting_status(controller, "next", "locks")
            assert waiting["waiting_for"]["held_by"] == "holder on holder-w"
            assert waiting["worker_id"] == "waiter-w"
            yield controller, holder


def end_sleeps(seconds: str) -> None:
    # Ansible outlives a worker killed alone; the test ends it.
    for line in processes_mentioning(f"sleep {seconds}"):
        os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


@pytest.mark.slow
async def test_a_holder_stopped_for_less_than_lost_after_keeps_its_locks(
    broker: Any, playbook_dir: Path, group: str, stamps: Path, tmp_path: Path, deployment: Deployment
) -> None:
    """Its will goes out and its link is down for a while: its host is still not given to another job."""
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    seconds = str(STOPPED_FOR + 15)
    async with open_next_behind_a_holder(scene, stamps, seconds, lost_after=PATIENT_LOST_AFTER) as (controller, holder):
        # The stop itself is what is tested: for all of it, `next` must not start.
        with paused(holder), trio.move_on_after(STOPPED_FOR) as patience:
            started = await controller.wait_for("next", {"running", *TERMINAL}, within=STOPPED_FOR + 1)
        assert patience.cancelled_caught, f"next started while its host's holder was stopped: {started}"
        finals = {name: await controller.wait_terminal(name, within=120) for name in ("holder", "next")}
    assert {name: (final["state"], final["worker_id"]) for name, final in finals.items()} == {
        "holder": ("success", "holder-w"),
        "next": ("success", "waiter-w"),
    }
    assert not overlap(interval("holder", stamps), interval("next", stamps))


async def test_a_killed_holders_locks_are_freed_when_the_group_takes_its_job_over(
    broker: Any, playbook_dir: Path, group: str, stamps: Path, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    seconds = unique_seconds(300)
    try:
        async with open_next_behind_a_holder(scene, stamps, seconds, lost_after=LOST_AFTER) as (controller, holder):
            holder.process.kill()
            started = await controller.wait_for("next", {"running", *TERMINAL}, within=LOST_AFTER + TAKEOVER_BOUND)
            final = await controller.wait_terminal("next")
            lost = await controller.wait_terminal("holder")
    finally:
        end_sleeps(seconds)
    assert started["state"] == "running"
    assert (final["state"], final["worker_id"]) == ("success", "waiter-w")
    assert lost["state"] == "failed"
    assert lost["error_message"].startswith("worker lost: holder-w")


async def test_a_holder_back_after_the_takeover_publishes_nothing_for_its_job_and_ends_it(
    broker: Any, playbook_dir: Path, group: str, stamps: Path, tmp_path: Path, deployment: Deployment
) -> None:
    scene = Scene(broker, group, playbook_dir, tmp_path, deployment)
    seconds = unique_seconds(301)
    try:
        async with open_next_behind_a_holder(scene, stamps, seconds, lost_after=LOST_AFTER) as (controller, holder):
            with paused(holder), trio.fail_after(LOST_AFTER + TAKEOVER_BOUND):
                lost = await controller.wait_terminal("holder", within=LOST_AFTER + TAKEOVER_BOUND)
                final = await controller.wait_terminal("next", within=LOST_AFTER + TAKEOVER_BOUND)
            await holder.wait_for_line("task holder: taken over by waiter-w while this worker was away")
            await wait_runs_ended(seconds)
            # Back, it holds web2 no more: a new job on it runs.
            await controller.submit(stamp_job("after", stamps, limit="web2", seconds=0))
            after = await controller.wait_terminal("after", within=60)
            # Draining, it left once its job had ended (while `waiter-w` still runs).
            assert await holder.wait_exit() == 0
    finally:
        end_sleeps(seconds)
    assert (lost["state"], lost["taken_over_by"]) == ("failed", "waiter-w")
    assert (final["state"], final["worker_id"]) == ("success", "waiter-w")
    assert (after["state"], after["worker_id"]) == ("success", "waiter-w")
    from_the_holder = [status for status in controller.statuses["holder"] if status["state"] in TERMINAL]
    assert [status.get("worker_id") for status in from_the_holder] == ["waiter-w"]
