"""Random payloads and random field values: nothing crashes, every usable task_id gets one terminal status."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ansible_worker.controller.client import open_client, target_from_url
from ansible_worker.worker.intake import Accepted, Dropped, Rejected, read_task_message
from tests.conftest import Broker, make_settings, running_worker

TERMINAL = {"success", "failed", "cancelled", "timeout"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
field_values = {
    "playbook": st.sampled_from(["quick.yml", "missing.yml", "../x.yml", "/etc/passwd", ""]) | json_values,
    "inventory": st.sampled_from(["one_host.ini", "h1,", "../inv"]) | json_values,
    "extra_vars": st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
    "limit": st.sampled_from(["host1", "-x", "@f"]) | json_values,
    "tags": st.lists(st.text(max_size=6), max_size=3) | json_values,
    "skip_tags": json_values,
    "verbosity": st.integers(-2, 6) | json_values,
    "check_mode": st.booleans() | json_values,
    "diff_mode": json_values,
    "forks": st.integers(-1, 2000) | json_values,
    "timeout": st.floats(-1, 30, allow_nan=False) | json_values,
    "git_pull": st.just(False) | json_values,
}


@st.composite
def task_messages(draw: st.DrawFn, task_id: str) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(sorted(field_values)), unique=True))
    message: dict[str, Any] = {name: draw(field_values[name]) for name in chosen}
    message["task_id"] = task_id
    return message


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=300) | json_values.map(lambda value: json.dumps(value).encode()))
def test_intake_never_raises(payload: bytes) -> None:
    assert isinstance(read_task_message(payload, max_bytes=200), Accepted | Rejected | Dropped)


@settings(max_examples=400, deadline=None)
@given(message=task_messages("fuzzed"))
def test_intake_answers_every_usable_task_id(message: dict[str, Any]) -> None:
    outcome = read_task_message(json.dumps(message).encode(), max_bytes=1 << 20)
    assert isinstance(outcome, Accepted | Rejected)


# Each example starts a worker: few examples, and no shrinking (a failure prints its batch).
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate])
@given(batch=st.lists(st.integers(0, 10**6), min_size=12, max_size=12).flatmap(
    lambda seeds: st.tuples(*(task_messages(f"fz-{index}-{seed}") for index, seed in enumerate(seeds)))
))  # fmt: skip
def test_live_worker_gives_each_message_exactly_one_terminal_status(
    broker: Broker, playbook_dir: Path, group: str, batch: tuple[dict[str, Any], ...]
) -> None:
    noise = [b"", b"\x00\xff", b"[]", b'{"task_id": 3}', b'{"task_id": "bad id"}']
    # Examples share the fixtures: a group of its own keeps earlier retained statuses out.
    group = f"{group}-{uuid.uuid4().hex[:6]}"

    async def main() -> dict[str, list[str]]:
        settings = make_settings(broker.port, playbook_dir, group, kill_grace=1, task_timeout=20)
        seen: dict[str, list[str]] = {}
        async with (
            running_worker(settings),
            open_client(target_from_url(f"mqtt://127.0.0.1:{broker.port}", group=group)) as client,
        ):
            receive = await client.subscribe([f"{client.topics.tasks}/+/status"])
            for payload in [*noise, *(json.dumps(message).encode() for message in batch)]:
                await client.link.publish(client.topics.tasks, payload, qos=2)
            ids = {message["task_id"] for message in batch}
            with trio.fail_after(120):
                async for message in receive:
                    status = json.loads(message.payload)
                    if status["state"] in TERMINAL:
                        seen.setdefault(status["task_id"], []).append(status["state"])
                    if ids <= seen.keys():
                        break
            await client.barrier()
            while True:
                try:
                    late = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                status = json.loads(late.payload)
                if status["state"] in TERMINAL:
                    seen.setdefault(status["task_id"], []).append(status["state"])
        return seen

    seen = trio.run(main)
    assert sorted(seen) == sorted(message["task_id"] for message in batch)
    assert all(len(states) == 1 for states in seen.values()), seen
