"""The job record: published retained before the terminal status, complete, bounded, expiring with the status."""

from __future__ import annotations

import json
import logging
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.client import Client, ClientError
from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.records import decode_record
from ansible_worker.protocol.topics import Topics
from tests.conftest import Broker, client_for, make_settings, open_controller, running_worker


async def retained(broker: Broker, topic: str, *, within: float = 10) -> tuple[bytes, int | None] | None:
    """The retained message on `topic` (payload, expiry) as a new client sees it, or None."""
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="probe-" + uuid.uuid4().hex[:8])
    marker_topic = f"probe/{uuid.uuid4().hex}"
    async with open_mqtt_link(options) as link:
        await link.subscribe(topic, 1)
        await link.subscribe(marker_topic, 1)
        await link.publish(marker_topic, b"marker", qos=1)
        with trio.fail_after(within):
            async for message in link.messages():
                if message.topic == marker_topic:
                    return None
                if message.topic == topic and message.payload:
                    return message.payload, message.expiry
    return None


async def run_job(broker: Broker, playbook_dir: Path, group: str, job: dict[str, Any], **worker: Any) -> dict[str, Any]:
    """Run `job` on a worker with `worker` settings; its terminal status as a controller saw it."""
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group, **worker)),
        open_controller(broker, group) as controller,
    ):
        await controller.submit(job)
        return await controller.wait_terminal(job["task_id"], within=90)


async def test_record_is_on_the_broker_before_the_terminal_status(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    topics = Topics("ansible", group)
    seen_record_first: list[bool] = []
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group)),
        open_controller(broker, group) as controller,
    ):
        options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="watcher-" + uuid.uuid4().hex[:8])
        async with open_mqtt_link(options) as link:
            await link.subscribe(topics.record("rec-order"), 1)
            await link.subscribe(topics.status("rec-order"), 1)
            await controller.submit(
                {"task_id": "rec-order", "playbook": "record_fail.yml", "inventory": "inventory.ini"}
            )
            with trio.fail_after(90):
                async for message in link.messages():
                    if message.topic.endswith("/record"):
                        seen_record_first.append(True)
                    elif json.loads(message.payload)["state"] in ("success", "failed"):
                        final = json.loads(message.payload)
                        break
    assert seen_record_first == [True], "the record must arrive before the terminal status"
    assert final["state"] == "failed"
    found = await retained(broker, topics.record("rec-order"))
    assert found is not None
    record = decode_record(found[0])
    assert final["record"] == {"bytes": len(found[0]), "events": len(record["events"]), "cut": False}
    assert record["status"]["state"] == "failed"
    assert record["status"]["tasks_failed"] == 1
    assert "fatal: [host2]: FAILED!" in record["output"]
    assert "host2 broke on purpose" in record["output"]
    assert "PLAY RECAP" in record["output"]
    failed = [event for event in record["events"] if event.get("status") == "failed"]
    assert [(event["host"], event["task"]) for event in failed] == [("host2", "Break on host2")]


async def test_rate_limited_job_keeps_every_event_without_gaps(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {"task_id": "rec-rate", "playbook": "chatty.yml", "inventory": "inventory.ini"}
    final = await run_job(broker, playbook_dir, group, job, events_per_second=2)
    assert final["state"] == "success"
    assert final["events_dropped"] > 0, "the live rate limit must have held events back for this test to mean anything"
    found = await retained(broker, Topics("ansible", group).record("rec-rate"))
    assert found is not None
    record = decode_record(found[0])
    numbers = [event["seq"] for event in record["events"]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert record["events_total"] == len(numbers) > final["last_event_seq"]
    # Two hosts, forty items each: every item result is there, not just what went out live.
    items = [event for event in record["events"] if event["event"] == "runner_item_on_ok"]
    assert len(items) == 80
    assert record["events"][-1]["event"] == "playbook_on_stats"


async def test_record_over_its_limit_is_cut_and_keeps_the_newest(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    job = {"task_id": "rec-cut", "playbook": "noise.yml", "inventory": "one_host.ini"}
    final = await run_job(broker, playbook_dir, group, job, record_limit_bytes=16384)
    assert final["state"] == "success"
    assert final["record"]["cut"] is True
    found = await retained(broker, Topics("ansible", group).record("rec-cut"))
    assert found is not None
    payload, _ = found
    assert len(payload) <= 16384
    assert final["record"]["bytes"] == len(payload)
    record = decode_record(payload)
    assert record["cut"] is True
    assert record["output_bytes"] > len(record["output"].encode())
    # The newest part: the end of the run is there, its beginning is not.
    assert record["output"].rstrip().splitlines()[-1].startswith("host1 ")
    assert "PLAY RECAP" in record["output"]
    assert "PLAY [Output that does not compress]" not in record["output"]
    assert record["events"][-1]["event"] == "playbook_on_stats"
    assert record["events"][0]["seq"] > 1
    assert record["events_total"] == record["events"][-1]["seq"]


async def test_record_expires_with_the_status(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {"task_id": "rec-expiry", "playbook": "quick.yml", "inventory": "one_host.ini"}
    topics = Topics("ansible", group)
    final = await run_job(broker, playbook_dir, group, job, status_retention=3)
    assert final["record"] is not None
    record = await retained(broker, topics.record("rec-expiry"))
    status = await retained(broker, topics.status("rec-expiry"))
    assert record is not None
    assert status is not None
    # The same expiry interval, counted down from nearly the same moment (read one after the
    # other, so a second may tick between the two reads).
    assert record[1] is not None
    assert status[1] is not None
    assert 0 < record[1] <= 3
    assert 0 < status[1] <= 3
    assert abs(record[1] - status[1]) <= 1
    # Mosquitto drops an expired retained message when it is next looked at: look until then, bounded.
    with trio.fail_after(15):
        while True:
            if await retained(broker, topics.record("rec-expiry")) is None:
                break
            await trio.sleep(0.25)
    assert await retained(broker, topics.status("rec-expiry")) is None


async def test_publish_records_off_publishes_none(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {"task_id": "rec-off", "playbook": "quick.yml", "inventory": "one_host.ini"}
    final = await run_job(broker, playbook_dir, group, job, publish_records=False)
    assert final["state"] == "success"
    assert final["record"] is None
    assert await retained(broker, Topics("ansible", group).record("rec-off")) is None


@pytest.fixture
def small_broker(tmp_path: Path) -> Any:
    directory = tmp_path / "small-broker"
    directory.mkdir()
    instance = Broker(directory, "message_size_limit 20000\n")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


async def test_record_refused_by_the_broker_is_sent_smaller(
    small_broker: Broker, playbook_dir: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ansible_worker.worker.record_publisher")
    job = {"task_id": "rec-big", "playbook": "noise.yml", "inventory": "one_host.ini"}
    final = await run_job(small_broker, playbook_dir, group, job)
    assert final["state"] == "success"
    assert final["return_code"] == 0
    # Mosquitto answers an MQTT 5 client with a reason code, or (2.0) closes its connection.
    refusals = [
        r.getMessage()
        for r in caplog.records
        if "over its record of" in r.getMessage() or "refused its record" in r.getMessage()
    ]
    assert refusals, "the broker must have refused the first record"
    found = await retained(small_broker, Topics("ansible", group).record("rec-big"))
    assert found is not None
    payload, _ = found
    assert len(payload) <= 20000
    record = decode_record(payload)
    assert record["cut"] is True
    assert final["record"] == {"bytes": len(payload), "events": len(record["events"]), "cut": True}
    assert record["status"]["state"] == "success"
    assert "PLAY RECAP" in record["output"]


async def test_client_record_reads_it_and_rejects_garbage(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {"task_id": "rec-client", "playbook": "quick.yml", "inventory": "one_host.ini"}
    await run_job(broker, playbook_dir, group, job)
    async with client_for(broker, group) as client:
        record = await client.record("rec-client")
        assert record is not None
        assert record["status"]["state"] == "success"
        assert await client.record("no-such-job") is None
        await client.publish(client.topics.record("rec-garbage"), zlib.compress(b"[1, 2]"), qos=1, retain=True)
        with pytest.raises(Exception, match="not a job record"):
            await client.record("rec-garbage")
        # The real record of one job, retained under another job's topic, is not that job's.
        payload = await client_payload(client, client.topics.record("rec-client"))
        await client.publish(client.topics.record("rec-other"), payload, qos=1, retain=True)
        with pytest.raises(ClientError, match="not a job record of rec-other: it is the record of another job"):
            await client.record("rec-other")


async def client_payload(client: Client, topic: str) -> bytes:
    """The retained payload on `topic`, as the broker holds it."""
    receive = await client.subscribe([topic])
    try:
        with trio.fail_after(10):
            return (await receive.receive()).payload
    finally:
        await client.unsubscribe([topic], receive)
