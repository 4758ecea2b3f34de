"""Host locks under faults: a link that drops, a broker that restarts or stalls, a skewed clock, lock sets too large.

Real broker, real workers, real Ansible. A worker's link drops because the worker is stopped
(SIGSTOP) past its keepalive, as a stalled VM or a partition does; a broker stalls because it
is stopped. Where the broker cannot produce a fault (a clock set wrong, a request that vanishes
from a worker's book), it is injected, and said so at the test. As in the other tests of host
locks, each job's playbook writes when it started and ended, and the tests compare those times.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from ansible_worker.controller.client import Client
from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.request_fields import MAX_LOCKS
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker import group_claims as group_claims_module
from ansible_worker.worker import group_locks as group_locks_module
from ansible_worker.worker.service import Worker
from testing.broker import Broker
from tests.conftest import (
    WorkerProcess,
    client_for,
    make_settings,
    open_controller,
    running_worker,
    unique_seconds,
    wait_online,
    worker_process,
)
from tests.worker.lock_faults import (
    LOST_AFTER,
    SKEWED,
    SLACK,
    end_sleep,
    killed,
    lost_link,
    persistent_broker,
    process_config,
    steady_settings,
    wait_logged,
    wait_presence,
    wait_settled,
    wait_sleeping,
    waits_for,
)
from tests.worker.test_host_locks import interval, overlap, stamp_job, waiting_status, with_stamp_playbooks

LOCAL = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Say so
      ansible.builtin.debug:
        msg: ran
"""


@pytest.fixture
def playbook_dir(playbook_dir: Path) -> Path:
    (playbook_dir / "local.yml").write_text(LOCAL)
    return with_stamp_playbooks(playbook_dir)


# -- a worker back from an outage -----------------------------------------------------


async def away(outage: str, late: WorkerProcess, steady: Worker, broker: Broker, client: Client) -> None:
    """Stop `late` (SIGSTOP) and let it lose its link (`link`), or restart the broker meanwhile (`broker`)."""
    late.process.send_signal(signal.SIGSTOP)
    if outage == "link":
        await wait_presence(client, "late", lost_link)
    else:
        connections = steady.session.connections
        broker.stop()
        broker.start()
        with trio.fail_after(SLACK):
            await steady.session.wait_connection_after(connections)


@pytest.mark.parametrize("outage", ["link", "broker"])
async def test_a_worker_back_from_an_outage_asks_the_group_what_it_holds_before_it_grants(
    outage: str, playbook_dir: Path, group: str, stamps: Path, tmp_path: Path
) -> None:
    """While `late` is away, `first` takes web1 on `steady`; back, `late` must not give web1 to `second` meanwhile.

    `late` missed `first`'s request, and learns it only by asking the group again. Its link
    drops (stopped for 1.5 keepalives, 7.5 s), or the broker restarts while it is stopped:
    then `steady`, back first, waits for `late` to say what it holds until it is lost
    (`lost_after`), and `late` comes back after that.
    """
    async with persistent_broker(tmp_path) as broker:
        late_config = process_config(tmp_path, broker, playbook_dir, group, "late")
        async with client_for(broker, group) as client, worker_process("run", "-c", str(late_config)) as late:
            # First, so that it knows the group's locks (none) long before it is stopped.
            await wait_online(client, "late")
            async with running_worker(steady_settings(broker, playbook_dir, group)) as steady:
                await wait_online(client, "steady")
                try:
                    await away(outage, late, steady, broker, client)
                    async with open_controller(broker, group) as controller:
                        await controller.submit(stamp_job("first", stamps, limit="web1", seconds=8))
                        running = await controller.wait_for("first", {"running"})
                        # `steady` takes no more jobs: `second` goes to `late`.
                        steady.request_shutdown()
                        await wait_presence(client, "steady", lambda presence: presence.get("state") == "draining")
                        late.process.send_signal(signal.SIGCONT)
                        await late.wait_for_line("reconnected to broker")
                        await controller.submit(stamp_job("second", stamps, limit="web1", seconds=0))
                        finals = {name: await controller.wait_terminal(name) for name in ("first", "second")}
                        said = waits_for(controller.statuses["second"], "locks")
                finally:
                    late.process.send_signal(signal.SIGCONT)
            assert await late.stop() == 0
    assert running["worker_id"] == "steady"
    assert {name: status["state"] for name, status in finals.items()} == {"first": "success", "second": "success"}
    assert finals["second"]["worker_id"] == "late"
    assert not overlap(interval("first", stamps), interval("second", stamps))
    assert {status["waiting_for"]["held_by"] for status in said} == {"first on steady"}


# -- requests that fail, releases that are lost --------------------------------------


async def test_a_lock_request_the_broker_did_not_confirm_is_withdrawn(
    broker: Broker,
    playbook_dir: Path,
    group: str,
    stamps: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker stalls as `doomed` asks for web1: the job fails, and web1 is not held for it afterwards."""
    # The waits for the broker are what fail here (the lock's echo, then the start claim's):
    # how long they last is not the subject.
    monkeypatch.setattr(group_locks_module, "ECHO_TIMEOUT", 3.0)
    monkeypatch.setattr(group_claims_module, "CLAIM_TIMEOUT", 3.0)
    settings = make_settings(broker.port, playbook_dir, group, worker_id="w", concurrency=1, host_locks=True)
    seconds = unique_seconds(60)
    async with open_controller(broker, group) as controller, running_worker(settings):
        # `slot` holds the one slot (and no lock): `doomed` starts, and asks for web1, when it ends.
        await controller.submit(stamp_job("slot", stamps, limit="web3", locks=[], seconds=seconds))
        await controller.wait_for("slot", {"running"})
        await controller.submit(stamp_job("doomed", stamps, limit="web1", seconds=0))
        await waiting_status(controller, "doomed", "queue_position")
        sleeping = await wait_sleeping(seconds)
        assert broker.process is not None
        broker.process.send_signal(signal.SIGSTOP)
        try:
            end_sleep(sleeping)
            # Past its locks (which it did not get), it waits to pass the start fence.
            await wait_logged(caplog, "task doomed: waiting for the broker to confirm its start")
        finally:
            broker.process.send_signal(signal.SIGCONT)
        doomed = await controller.wait_terminal("doomed")
        # web1 is free: the request that failed is not held, renewed or waited for.
        await controller.submit(stamp_job("next", stamps, limit="web1", seconds=0))
        after = await controller.wait_terminal("next", within=SLACK)
    assert doomed["state"] == "failed"
    assert "did not send the lock request back" in doomed["error_message"]
    assert after["state"] == "success", after


async def test_a_release_lost_with_the_link_is_sent_again_when_the_link_is_back(
    broker: Broker, playbook_dir: Path, group: str, stamps: Path
) -> None:
    """`held` ends while the broker is away for longer than a release may take: `next`, behind it, still runs."""
    settings = make_settings(broker.port, playbook_dir, group, worker_id="w", concurrency=2, host_locks=True)
    seconds = unique_seconds(61)
    async with running_worker(settings) as worker:
        async with open_controller(broker, group) as controller:
            await controller.submit(stamp_job("held", stamps, limit="web1", seconds=seconds))
            await controller.wait_for("held", {"running"})
            await controller.submit(stamp_job("next", stamps, limit="web1", seconds=0))
            await waiting_status(controller, "next", "locks")
        sleeping = await wait_sleeping(seconds)
        connections = worker.session.connections
        broker.stop()
        end_sleep(sleeping)
        # Its release was given up: it ended.
        await wait_settled(worker, "held")
        broker.start()
        with trio.fail_after(SLACK):
            await worker.session.wait_connection_after(connections)
        async with open_controller(broker, group) as controller:
            after = await controller.wait_terminal("next", within=SLACK)
    assert after["state"] == "success", after


# -- clocks ------------------------------------------------------------------------------


async def test_a_holder_whose_clock_is_behind_keeps_its_locks(
    broker: Broker, playbook_dir: Path, group: str, stamps: Path, tmp_path: Path
) -> None:
    """The holder's wall clock is wrong (injected: the broker cannot set a clock); its host is still not given away."""
    launcher = tmp_path / "skewed-worker"
    launcher.write_text(SKEWED)
    launcher.chmod(0o755)
    holding = process_config(tmp_path, broker, playbook_dir, group, "behind")
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        worker_process("run", "-c", str(holding), executable=str(launcher)) as behind,
    ):
        await wait_online(client, "behind")
        await controller.submit(stamp_job("held", stamps, limit="web2", seconds=12))
        running = await controller.wait_for("held", {"running"})
        behind.process.send_signal(signal.SIGTERM)
        await behind.wait_for_line("draining")
        async with running_worker(steady_settings(broker, playbook_dir, group)):
            await wait_online(client, "steady")
            await controller.submit(stamp_job("next", stamps, limit="web2", seconds=0))
            finals = {name: await controller.wait_terminal(name, within=60) for name in ("held", "next")}
        assert await behind.wait_exit() == 0
    assert running["worker_id"] == "behind"
    assert {name: (final["state"], final["worker_id"]) for name, final in finals.items()} == {
        "held": ("success", "behind"),
        "next": ("success", "steady"),
    }
    assert not overlap(interval("held", stamps), interval("next", stamps))
    assert {status["waiting_for"]["held_by"] for status in waits_for(controller.statuses["next"], "locks")} == {
        "held on behind"
    }


# -- size ----------------------------------------------------------------------------------

# Names as long as a lock name may be (256): four jobs of MAX_LOCKS of them say more in one
# renewal than the 4 MiB a worker reads of one lock message.
BIG_JOBS = 4
NAME = 250


def many_locks(job: int) -> list[str]:
    return [f"{job}-{number:04d}-".ljust(NAME, "x") for number in range(MAX_LOCKS)]


async def test_a_renewal_larger_than_one_message_reaches_a_new_worker_in_parts(
    broker: Broker, playbook_dir: Path, group: str, stamps: Path
) -> None:
    big = steady_settings(broker, playbook_dir, group, concurrency=BIG_JOBS, max_message_bytes=8 * 1024 * 1024)
    names = [f"big{job}" for job in range(BIG_JOBS)]
    async with (
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
        running_worker(big) as holder,
    ):
        for job, name in enumerate(names):
            await controller.submit(stamp_job(name, stamps, limit="web1", locks=many_locks(job), seconds=10))
        for name in names:
            await controller.wait_for(name, {"running"})
        # It keeps its jobs and their locks, and takes no more.
        holder.request_shutdown()
        await wait_presence(client, "steady", lambda presence: presence.get("state") == "draining")
        newcomer = make_settings(broker.port, playbook_dir, group, worker_id="newcomer", host_locks=True)
        async with running_worker(newcomer):
            await wait_online(client, "newcomer")
            await controller.submit(stamp_job("next", stamps, limit="web1", locks=[many_locks(3)[-1]], seconds=0))
            finals = {name: await controller.wait_terminal(name) for name in (*names, "next")}
    assert {name: final["state"] for name, final in finals.items()} == dict.fromkeys(finals, "success")
    assert finals["next"]["worker_id"] == "newcomer"
    assert not overlap(interval("big3", stamps), interval("next", stamps))
    assert {status["waiting_for"]["held_by"] for status in waits_for(controller.statuses["next"], "locks")} == {
        "big3 on steady"
    }


async def test_a_job_with_more_locks_than_a_job_may_hold_fails_naming_the_cap(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    """By host count (an inventory of MAX_LOCKS + 1 hosts), and by size (long names that JSON escapes)."""
    settings = make_settings(
        broker.port, playbook_dir, group, worker_id="w", host_locks=True, max_message_bytes=8 * 1024 * 1024
    )
    hosts = ",".join(f"h{number}" for number in range(MAX_LOCKS + 1))
    wide = [f"{number:04d}".ljust(256, "\u00e9") for number in range(1500)]
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit({"task_id": "many", "playbook": "local.yml", "inventory": hosts})
        await controller.submit({"task_id": "wide", "playbook": "local.yml", "inventory": "web.ini", "locks": wide})
        many = await controller.wait_terminal("many")
        wide_final = await controller.wait_terminal("wide")
    assert many["state"] == "failed"
    assert f"{MAX_LOCKS + 1} locks, more than the {MAX_LOCKS}" in many["error_message"]
    assert wide_final["state"] == "failed"
    assert "MiB" in wide_final["error_message"]


# -- what a job and its status say -------------------------------------------------------


async def test_a_lock_request_lost_while_waiting_fails_the_job_saying_so(
    broker: Broker, playbook_dir: Path, group: str, stamps: Path
) -> None:
    settings = make_settings(broker.port, playbook_dir, group, worker_id="w", concurrency=2, host_locks=True)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit(stamp_job("held", stamps, limit="web1", seconds=4))
        await controller.wait_for("held", {"running"})
        await controller.submit(stamp_job("waiter", stamps, limit="web1", seconds=0))
        await waiting_status(controller, "waiter", "locks")
        # Injected: the waiter's request leaves the book, as one that lapsed unrenewed would.
        worker.locks.taken_over("waiter", "elsewhere")
        waiter = await controller.wait_terminal("waiter")
        assert (await controller.wait_terminal("held"))["state"] == "success"
    assert waiter["state"] == "failed"
    assert waiter["error_message"].startswith("could not get the job's locks: the lock request")
    assert "Trio" not in waiter["error_message"]


async def test_a_lock_message_with_an_overlong_task_id_or_worker_id_counts_for_nothing(
    broker: Broker, playbook_dir: Path, group: str, stamps: Path
) -> None:
    """Unsigned, anyone may lock; but what a status copies from a lock message is bounded as every id is."""
    settings = make_settings(broker.port, playbook_dir, group, worker_id="w", host_locks=True)
    topics = Topics("ansible", group)
    long_worker = {"claim": "c1", "task_id": "t1", "locks": ["web1"], "limits": {}}
    long_task = {"claim": "c2", "task_id": "t" * 5000, "locks": ["web1"], "limits": {}}
    expires_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    messages = [
        {"type": "acquire", "worker_id": "w" * 5000, "requests": [long_worker], "expires_at": expires_at},
        {"type": "acquire", "worker_id": "noisy", "requests": [long_task], "expires_at": expires_at},
    ]
    options = LinkOptions("127.0.0.1", broker.port, "noisy-client")
    async with open_controller(broker, group) as controller, running_worker(settings):
        async with open_mqtt_link(options) as link:
            for message in messages:
                await link.publish(topics.locks, json.dumps({**message, "lifetime": 86_400}).encode(), qos=1)
        await controller.submit(stamp_job("job", stamps, limit="web1", seconds=0))
        final = await controller.wait_terminal("job", within=SLACK)
    assert final["state"] == "success"
    assert not waits_for(controller.statuses["job"], "locks")


# -- a new worker and the wills of the dead --------------------------------------------


async def test_a_new_worker_says_which_workers_it_waits_to_hear_before_its_first_locks(
    broker: Broker, playbook_dir: Path, group: str, stamps: Path, tmp_path: Path
) -> None:
    """A worker killed a moment ago may be only cut off: the newcomer waits for it, and its job says so."""
    async with open_controller(broker, group) as controller, client_for(broker, group) as client:
        await killed(tmp_path, broker, playbook_dir, group, client)
        async with running_worker(steady_settings(broker, playbook_dir, group)):
            await controller.submit(stamp_job("job", stamps, limit="web1", seconds=0))
            waiting = await waiting_status(controller, "job", "locks_sync")
            final = await controller.wait_terminal("job", within=SLACK)
    assert waiting["state"] == "queued"
    assert waiting["waiting_for"] == {"locks_sync": ["gone"]}
    assert final["state"] == "success"


async def test_a_new_worker_does_not_wait_for_a_worker_whose_will_is_older_than_lost_after(
    broker: Broker, playbook_dir: Path, group: str, stamps: Path, tmp_path: Path
) -> None:
    async with open_controller(broker, group) as controller, client_for(broker, group) as client:
        await killed(tmp_path, broker, playbook_dir, group, client)
        # The will's age is the subject: the broker counts it.
        await trio.sleep(LOST_AFTER + 1)
        async with running_worker(steady_settings(broker, playbook_dir, group)):
            began = trio.current_time()
            await controller.submit(stamp_job("job", stamps, limit="web1", seconds=0))
            await controller.wait_for("job", {"running"})
            # Not held back until the newcomer could have judged `gone` lost itself.
            assert trio.current_time() - began < LOST_AFTER - 4
            final = await controller.wait_terminal("job", within=SLACK)
    assert final["state"] == "success"
    assert not waits_for(controller.statuses["job"], "locks_sync")
