"""Measure what the job record costs: time to the terminal status, record size, broker memory.

Runs standalone (`python benchmarks/bench_record.py`): starts its own Mosquitto on a free
loopback port and two `ansible-worker run` processes, one with `publish_records` on and one
with it off, and runs the same jobs on both, side by side with `ansible-playbook` run
directly, in the same run. Prints the figures and writes them to bench_record.json here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from lab import Lab, rss_kib, wait_for_worker

from ansible_worker import __version__
from ansible_worker.controller.client import Client, open_client, target_from_url
from ansible_worker.mqtt.link import InboundMessage, LinkOptions, open_mqtt_link
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.models import JobStatus
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.events.record_collector import RecordCollector
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.worker.record_publisher import RecordPublisher

RESULTS = Path(__file__).with_name("bench_record.json")


async def time_to_terminal(client: Client, group: str, playbook: str, inventory: str) -> tuple[float, dict[str, Any]]:
    """Seconds from publishing a job to its terminal status, and that status."""
    client.topics = Topics("ansible", group)
    task_id = f"r-{uuid.uuid4().hex[:10]}"
    handle = await client.follow(task_id, events=False)
    async with handle:
        start = time.perf_counter()
        await client.publish(
            client.topics.tasks,
            json.dumps({"task_id": task_id, "playbook": playbook, "inventory": inventory}).encode(),
            qos=1,
        )
        with trio.fail_after(600):
            final = await handle.wait()
        return time.perf_counter() - start, final


async def record_gap(port: int, group: str, client: Client, playbook: str, inventory: str) -> float:
    """Seconds between the record and the terminal status as a subscriber receives them."""
    topics = Topics("ansible", group)
    task_id = f"g-{uuid.uuid4().hex[:10]}"
    options = LinkOptions("127.0.0.1", port, f"gap-{uuid.uuid4().hex[:8]}")
    async with open_mqtt_link(options) as link:
        await link.subscribe(topics.record(task_id), 1)
        await link.subscribe(topics.status(task_id), 1)
        job = {"task_id": task_id, "playbook": playbook, "inventory": inventory}
        await link.publish(topics.tasks, json.dumps(job).encode(), qos=1)
        record_at = None
        with trio.fail_after(600):
            async for message in link.messages():
                if message.topic.endswith("/record"):
                    record_at = time.perf_counter()
                elif json.loads(message.payload)["state"] in ("success", "failed", "cancelled", "timeout"):
                    assert record_at is not None, "the record must come first"
                    return time.perf_counter() - record_at
    raise RuntimeError("no terminal status")


async def publish_cost(port: int, record: dict[str, Any], rounds: int) -> list[float]:
    """Seconds the worker spends on a record before the terminal status: build, compress, publish, PUBACK.

    This is exactly what publishing the record adds to the time to the terminal status: the
    job's status goes out once `publish_record` returns. Measured with the worker's own
    publisher, on the same broker, for a record like `record`.
    """
    send, receive = trio.open_memory_channel[InboundMessage](16)
    session = BrokerSession(LinkOptions("127.0.0.1", port, f"cost-{uuid.uuid4().hex[:8]}"), [], send)
    publisher = RecordPublisher(session, Topics("ansible", "cost"), limit=1_048_576, retention=604_800)
    status = JobStatus.model_validate(record["status"])
    collector = RecordCollector()
    for event in record["events"]:
        collector.add(event)
    collector.output = OutputTail(1_048_576)
    collector.output.feed(record["output"].encode())
    costs = []
    async with trio.open_nursery() as nursery:
        await nursery.start(session.serve)
        with trio.fail_after(10):
            await session.wait_connected()
        for index in range(rounds):
            status = status.model_copy(update={"task_id": f"c-{index:04d}"})
            start = time.perf_counter()
            summary = await publisher.publish_record(status, collector)
            costs.append(time.perf_counter() - start)
            assert summary is not None
        nursery.cancel_scope.cancel()
    receive.close()
    return costs


def write_fleet(lab: Lab, hosts: int, tasks: int) -> None:
    """The event-heavy playbook: `tasks` tasks on `hosts` local hosts."""
    host_lines = "".join(f"host{index:02d}\n" for index in range(hosts))
    (lab.playbooks / "fleet.ini").write_text(
        f"[fleet]\n{host_lines}\n[fleet:vars]\nansible_connection=local\n"
        'ansible_python_interpreter="{{ ansible_playbook_python }}"\n'
    )
    from lab import heavy_playbook

    (lab.playbooks / "fleet.yml").write_text(heavy_playbook(tasks))


async def broker_memory(lab: Lab, payload: bytes, records: int) -> dict[str, Any]:
    """The broker's resident memory before and after `records` copies of `payload` are retained."""
    assert lab.broker.process is not None
    before = rss_kib(lab.broker.process.pid)
    options = LinkOptions("127.0.0.1", lab.port, "filler")
    async with open_mqtt_link(options) as link:
        topics = Topics("ansible", "filled")
        for index in range(records):
            await link.publish(topics.record(f"f-{index:05d}"), payload, qos=1, retain=True, expiry=604800)
    after = rss_kib(lab.broker.process.pid)
    return {
        "retained_records": records,
        "record_bytes": len(payload),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_record_kib": round((after - before) / records, 2) if records else None,
    }


async def one_task_rounds(lab: Lab, client: Client, rounds: int) -> tuple[list[float], ...]:
    """Seconds of one-task jobs with records on, off, and run directly; the gaps from record to status."""
    on: list[float] = []
    off: list[float] = []
    direct: list[float] = []
    gaps: list[float] = []
    for _ in range(rounds):
        # Interleaved, so that a slow moment of the machine hits both alike.
        on.append((await time_to_terminal(client, "on", "one.yml", "local.ini"))[0])
        off.append((await time_to_terminal(client, "off", "one.yml", "local.ini"))[0])
        direct.append(await lab.direct("one.yml", "local.ini"))
        gaps.append(await record_gap(lab.port, "on", client, "one.yml", "local.ini"))
    return on, off, direct, gaps


def one_task_figures(
    on: list[float], off: list[float], direct: list[float], gaps: list[float], costs: list[float], one: dict[str, Any]
) -> dict[str, Any]:
    """The one-task figures: medians of each side, what the record adds, and its publishing cost."""
    return {
        "records_on_median": round(statistics.median(on), 4),
        "records_off_median": round(statistics.median(off), 4),
        "ansible_playbook_direct_median": round(statistics.median(direct), 4),
        "added_by_record_median_ms": round((statistics.median(on) - statistics.median(off)) * 1000, 2),
        "record_publish_median_ms": round(statistics.median(costs) * 1000, 2),
        "record_publish_max_ms": round(max(costs) * 1000, 2),
        "record_bytes": one["record"]["bytes"],
        "record_to_status_gap_median_ms": round(statistics.median(gaps) * 1000, 2),
        "record_to_status_gap_max_ms": round(max(gaps) * 1000, 2),
    }


async def main(rounds: int, hosts: int, tasks: int, records: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-record-") as scratch:
        lab = Lab(Path(scratch))
        write_fleet(lab, hosts, tasks)
        lab.broker.start()
        try:
            target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group="on")
            async with (
                lab.worker("records-on", group_name="on", publish_records=True),
                lab.worker("records-off", group_name="off", publish_records=False),
                open_client(target) as client,
            ):
                client.topics = Topics("ansible", "on")
                await wait_for_worker(client, "records-on")
                client.topics = Topics("ansible", "off")
                await wait_for_worker(client, "records-off")
                on, off, direct, gaps = await one_task_rounds(lab, client, rounds)
                _, one = await time_to_terminal(client, "on", "one.yml", "local.ini")
                client.topics = Topics("ansible", "on")
                one_record = await client.record(one["task_id"])
                assert one_record is not None
                one_costs = await publish_cost(lab.port, one_record, rounds * 5)
                heavy_seconds, heavy = await time_to_terminal(client, "on", "fleet.yml", "fleet.ini")
                heavy_direct = await lab.direct("fleet.yml", "fleet.ini", forks=5)
                client.topics = Topics("ansible", "on")
                record = await client.record(heavy["task_id"])
                assert record is not None
                heavy_costs = await publish_cost(lab.port, record, rounds)
                raw_size = len(json.dumps(record, separators=(",", ":")).encode())
                payload = zlib.compress(json.dumps(record, separators=(",", ":")).encode(), 6)
            broker = await broker_memory(lab, payload, records)
        finally:
            lab.broker.stop()
    return {
        "version": __version__,
        "rounds": rounds,
        "one_task_seconds": one_task_figures(on, off, direct, gaps, one_costs, one),
        "event_heavy": {
            "hosts": hosts,
            "tasks": tasks,
            "state": heavy["state"],
            "events": heavy["record"]["events"] if heavy.get("record") else None,
            "record_bytes": heavy["record"]["bytes"] if heavy.get("record") else None,
            "record_cut": heavy["record"]["cut"] if heavy.get("record") else None,
            "uncompressed_bytes": raw_size,
            "record_publish_median_ms": round(statistics.median(heavy_costs) * 1000, 2),
            "record_publish_max_ms": round(max(heavy_costs) * 1000, 2),
            "worker_seconds": round(heavy_seconds, 3),
            "ansible_playbook_direct_seconds": round(heavy_direct, 3),
        },
        "broker": broker,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="one-task jobs per side")
    parser.add_argument("--hosts", type=int, default=50, help="hosts of the event-heavy playbook")
    parser.add_argument("--tasks", type=int, default=40, help="tasks of the event-heavy playbook")
    parser.add_argument("--records", type=int, default=1000, help="retained records for the broker's memory")
    options = parser.parse_args()
    figures = trio.run(main, options.rounds, options.hosts, options.tasks, options.records)
    print(json.dumps(figures, indent=2))
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {RESULTS}")
