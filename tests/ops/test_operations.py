"""Running it as an operator does: probes and metrics over real HTTP, JSON logs, the published API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import trio
import yaml

from ansible_worker.mqtt.link import InboundMessage, LinkOptions, open_mqtt_link
from ansible_worker.ops.api_schema import json_schemas, write_documents
from ansible_worker.protocol.records import decode_record
from ansible_worker.protocol.signing import Signer
from ansible_worker.protocol.topics import Topics
from tests.conftest import (
    ANSIBLE_PLAYBOOK,
    REPO,
    Broker,
    client_for,
    make_settings,
    require_signatures,
    running_worker,
    wait_online,
    worker_config,
    worker_process,
)

DOCS = REPO / "docs"
EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")
QUICK = {"playbook": "quick.yml", "inventory": "one_host.ini"}


async def http_get(port: int, path: str) -> tuple[int, str]:
    """Status code and body of one GET, as a probe or a scraper makes it."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n".encode())
            response = b""
            while chunk := await stream.receive_some(65536):
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def metric(text: str, sample: str) -> float:
    """The value of one sample line of the Prometheus text format, e.g. `x_total{state="success"}`."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {sample} in:\n{text}")


async def wait_for_readiness(port: int, code: int) -> str:
    with trio.fail_after(30):
        while True:
            status, body = await http_get(port, "/readyz")
            if status == code:
                return body
            await trio.sleep(0.05)  # readiness is state, asked for as a probe would


async def test_probes_and_metrics_follow_the_worker(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, http={"port": 0, "host": "127.0.0.1"}, drain_timeout=30)
    async with running_worker(settings) as worker:
        port = worker.http_port
        assert port is not None
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert await http_get(port, "/readyz") == (200, "ready\n")
        assert (await http_get(port, "/nope"))[0] == 404
        before = (await http_get(port, "/metrics"))[1]
        assert metric(before, 'ansible_worker_jobs_total{state="success"}') == 0
        assert metric(before, "ansible_worker_broker_connected") == 1

        async with client_for(broker, group) as client:
            job = await client.submit({"task_id": "metered", **QUICK})
            assert (await job.wait())["state"] == "success"
            invalid = await client.submit({"task_id": "invalid", "playbook": "quick.yml"})
            assert (await invalid.wait())["state"] == "failed"
        after = (await http_get(port, "/metrics"))[1]
        assert metric(after, 'ansible_worker_jobs_total{state="success"}') == 1
        assert metric(after, "ansible_worker_job_duration_seconds_count") == 1
        assert metric(after, "ansible_worker_events_processed_total") > 0
        assert metric(after, "ansible_worker_status_publish_latency_seconds_count") >= 3
        assert metric(after, "ansible_worker_capacity") == 1
        assert metric(after, "ansible_worker_messages_refused_total") == 1
        assert metric(after, 'ansible_worker_jobs_total{state="failed"}') == 0  # never became a job

        broker.stop()
        assert await wait_for_readiness(port, 503) == "not ready: not connected to the broker\n"
        assert (await http_get(port, "/healthz"))[0] == 200  # alive all the same: no restart wanted
        broker.start()
        await wait_for_readiness(port, 200)
        assert metric((await http_get(port, "/metrics"))[1], "ansible_worker_broker_reconnects_total") == 1

        async with client_for(broker, group) as client:
            running = await client.submit({"task_id": "drained", "playbook": "sleep.yml", "inventory": "one_host.ini"})
            async for status in running.statuses():
                if status["state"] == "running":
                    break
            worker.request_shutdown()
            assert await wait_for_readiness(port, 503) == "not ready: draining\n"
            draining = (await http_get(port, "/metrics"))[1]
            assert metric(draining, "ansible_worker_draining") == 1
            assert metric(draining, "ansible_worker_running_jobs") == 1
            worker.request_shutdown(hurry=True)


async def test_json_logs_name_the_task_and_the_worker(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    config = worker_config(tmp_path / "json.json", broker, playbook_dir, group, worker_id="logger-1")
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({**settings, "log_format": "json"}))
    async with worker_process("run", "-c", str(config)) as worker:
        async with client_for(broker, group) as client:
            await wait_online(client, "logger-1")
            job = await client.submit({"task_id": "logged", "playbook": "broken.yml", "inventory": "one_host.ini"})
            with trio.fail_after(60):
                await job.wait()
        await worker.stop()
    records = [json.loads(line) for line in worker.lines]
    assert records
    for record in records:
        assert set(record) >= {"time", "level", "logger", "message", "worker_id"}
        assert record["worker_id"] == "logger-1"
        assert record["time"].endswith("Z")
    about_job = [record for record in records if record.get("task_id") == "logged"]
    assert {record["logger"] for record in about_job} >= {"ansible_worker.run.runner"}
    assert any(record["message"].startswith("task logged failed") for record in about_job)
    assert not any("task_id" in record for record in records if "starting" in record["message"])


def test_published_schemas_match_the_code(tmp_path: Path) -> None:
    """docs/ is what `ansible-worker schema -o docs` writes now; regenerate it when this fails."""
    written = write_documents(tmp_path)
    for path in written:
        shipped = DOCS / path.relative_to(tmp_path)
        assert shipped.exists(), f"{shipped} is missing"
        assert shipped.read_text() == path.read_text(), f"{shipped} differs from the code"
    assert sorted(p.name for p in (DOCS / "schemas").iterdir()) == sorted(p.name for p in written[:-1])


def asyncapi_meta_schema() -> dict[str, Any]:
    # The official AsyncAPI 3.0.0 JSON Schema, from the @asyncapi/specs package that the
    # nox session installs with npm.
    location = os.environ.get("ASYNCAPI_SPEC_SCHEMA")
    assert location, "ASYNCAPI_SPEC_SCHEMA is not set: run the tests through nox (nox -s tests)"
    return dict(json.loads(Path(location).read_text()))


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    document = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    meta = asyncapi_meta_schema()
    validator = jsonschema.validators.validator_for(meta)(meta)
    assert [error.message for error in validator.iter_errors(document)] == []
    # The validator is not a rubber stamp: a wrong action and a missing channel fail it.
    broken = json.loads(json.dumps(document))
    broken["operations"]["receiveTasks"]["action"] = "subscribe"
    del broken["channels"]["tasks"]["address"]
    broken["channels"]["tasks"]["messages"] = "none"
    assert list(validator.iter_errors(broken))
    assert document["operations"]["receiveTasks"]["bindings"]["mqtt"] == {
        "qos": 2,
        "retain": False,
        "bindingVersion": "0.2.0",
    }
    assert document["operations"]["sendTaskStatus"]["bindings"]["mqtt"]["retain"] is True


# The schema of each message, by the last level of its topic.
WIRE_KINDS = {
    "tasks": "task-request",
    "status": "status",
    "events": "event",
    "cancel": "cancel-request",
    "claim": "claim",
    "request": "task-request",
    "record": "record",
    "templates": "catalogue",
    "locks": "lock",
}


async def test_every_message_on_the_wire_matches_its_schema(
    broker: Broker, playbook_dir: Path, group: str, keys: Path
) -> None:
    """A signed job, its cancel request, statuses, events, presence and claims, as the broker carried them."""
    schemas = json_schemas()
    validators = {name: jsonschema.Draft202012Validator(schema) for name, schema in schemas.items()}
    topics = Topics("ansible", group)
    seen: list[InboundMessage] = []
    (playbook_dir / "templates.yml").write_text(
        "templates:\n  quick:\n    playbook: quick.yml\n    survey: {n: {type: integer, default: 1}}\n"
        "    schedule: [{cron: '0 3 * * *', timezone: Europe/Berlin}]\n"
    )
    settings = make_settings(
        broker.port, playbook_dir, group, security=require_signatures(keys), templates="templates.yml"
    )
    signer = Signer.from_file(keys / "alice.key")

    async def record(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_mqtt_link(LinkOptions("127.0.0.1", broker.port, "recorder")) as link:
            await link.subscribe(f"ansible/{group}/#", 1)
            task_status.started()
            async for message in link.messages():
                seen.append(message)

    async with trio.open_nursery() as nursery:
        await nursery.start(record)
        async with running_worker(settings), client_for(broker, group, signer=signer) as client:
            done = await client.submit({"task_id": "wire-1", "playbook": "recap.yml", "inventory": "inventory.ini"})
            await done.wait()
            job = await client.submit({"task_id": "wire-2", "playbook": "sleep.yml", "inventory": "one_host.ini"})
            async for status in job.statuses():
                if status["state"] == "running":
                    await job.cancel(reason="schema check")
            await client.barrier()
        async with client_for(broker, group) as client:
            await client.barrier()
        nursery.cancel_scope.cancel()

    checked: dict[str, int] = {}
    for message in seen:
        if not message.payload or "/clients/" in message.topic:
            continue
        leaf = message.topic.rsplit("/", 1)[-1]
        kind = "presence" if message.topic.startswith(topics.worker("")) else WIRE_KINDS[leaf]
        kind = "catalogue" if message.topic == topics.templates else kind
        # A record is compressed JSON; every other message is plain JSON.
        document = decode_record(message.payload) if kind == "record" else json.loads(message.payload)
        errors = [error.message for error in validators[kind].iter_errors(document)]
        assert errors == [], f"{message.topic}: {errors}"
        checked[kind] = checked.get(kind, 0) + 1
    assert set(checked) == set(schemas), checked


def test_schema_command_prints_the_asyncapi_document() -> None:
    result = subprocess.run([EXECUTABLE, "schema"], capture_output=True, text=True, check=True)
    document = yaml.safe_load(result.stdout)
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"]["taskStatus"]["address"] == "{prefix}/{group}/tasks/{task_id}/status"


def test_config_file_names_the_settings_it_needs(tmp_path: Path, playbook_dir: Path) -> None:
    # http.port reaches the summary, so an operator sees where the probes are.
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps(
            {
                "mqtt": {"host": "127.0.0.1"},
                "worker": {
                    "group_name": "g",
                    "playbook_directory": str(playbook_dir),
                    "ansible_playbook_path": ANSIBLE_PLAYBOOK,
                    "http": {"port": 9100},
                },
            }
        )
    )
    result = subprocess.run([EXECUTABLE, "validate", "-c", str(config)], capture_output=True, text=True, check=True)
    assert "http          http://0.0.0.0:9100/healthz, /readyz, /metrics" in result.stdout
