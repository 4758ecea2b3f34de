"""The record's format: cut to its limit keeping the newest part, and read back only when it is one."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_worker.controller.artifacts import write_artifacts
from ansible_worker.protocol.records import RecordError, decode_record, encode_record, record_document


def document(events: int, output_lines: int) -> dict[str, Any]:
    # Incompressible enough that cutting is needed: each line and event carries random text.
    noise = [os.urandom(48).hex() for _ in range(max(events, output_lines))]
    return record_document(
        {"task_id": "t1", "state": "success"},
        [{"seq": n, "event": "runner_on_ok", "line": noise[n - 1]} for n in range(1, events + 1)],
        "".join(f"line {n} {noise[n]}\n" for n in range(output_lines)),
        output_bytes=0,
        events_total=events,
    )


def test_a_record_within_its_limit_is_whole() -> None:
    whole = document(10, 10)
    whole["output_bytes"] = len(whole["output"].encode())
    encoded = encode_record(whole, 1_000_000)
    assert encoded.cut is False
    assert decode_record(encoded.payload) == whole


@pytest.mark.parametrize("limit", [1024, 4096, 20000])
def test_a_cut_record_fits_keeps_the_newest_and_says_so(limit: int) -> None:
    whole = document(500, 500)
    whole["output_bytes"] = len(whole["output"].encode())
    encoded = encode_record(whole, limit)
    assert len(encoded.payload) <= limit
    assert encoded.cut is True
    cut = decode_record(encoded.payload)
    assert cut["cut"] is True
    assert cut["events_total"] == 500
    assert cut["output_bytes"] == whole["output_bytes"]
    if cut["events"]:
        assert cut["events"][-1]["seq"] == 500
        numbers = [event["seq"] for event in cut["events"]]
        assert numbers == list(range(numbers[0], 501))
    assert whole["output"].endswith(cut["output"])
    assert cut["output"] == "" or cut["output"].startswith("line ")
    # Close to the limit, not far under it: at most a few shrink steps away.
    assert len(encoded.payload) > limit * 0.3 or not cut["events"]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"plain json is not a record",
        zlib.compress(b"[1, 2, 3]"),
        zlib.compress(json.dumps({"format": "other"}).encode()),
        zlib.compress(json.dumps({"format": "ansible-worker-record/1", "events": "x", "output": ""}).encode()),
    ],
)
def test_what_is_not_a_record_is_refused_clearly(payload: bytes) -> None:
    with pytest.raises(RecordError, match="not a job record"):
        decode_record(payload)


def test_a_payload_that_unpacks_to_too_much_is_refused() -> None:
    bomb = zlib.compress(b" " * 10_000_000, 9)
    assert len(bomb) < 20_000
    with pytest.raises(RecordError, match="unpacks to more than"):
        decode_record(bomb, max_bytes=1_000_000)


def test_artifacts_of_a_hostile_record_stay_inside_the_directory(tmp_path: Path) -> None:
    hostile = {
        "task_id": "ok-id",
        "status": {"state": "failed", "return_code": 2},
        "events": [{"seq": "../../escape", "event": "runner_on_ok"}, {"seq": -3, "event": "x"}, "junk"],
        "output": "",
    }
    job_dir = write_artifacts(tmp_path / "out", "ok-id", hostile)
    names = sorted(path.name.split("-", 1)[0] for path in (job_dir / "job_events").iterdir())
    assert names == ["1", "2"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    with pytest.raises(ValueError, match="cannot name a directory"):
        write_artifacts(tmp_path / "out", "../escape", hostile)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_EVENT_KINDS = ["runner_on_ok", "runner_on_failed", "playbook_on_stats", "playbook_on_play_start", "playbook_on_start"]
_EVENT_KEYS = ["seq", "line", "time", "play", "task", "host", "action", "result", "status", "no_log", "hosts"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.dictionaries(st.sampled_from(["state", "return_code", "playbook"]), _JSON),
    events=st.lists(
        _JSON
        | st.fixed_dictionaries(
            {"event": st.sampled_from(_EVENT_KINDS) | _JSON},
            optional={key: _JSON for key in _EVENT_KEYS},
        ),
        max_size=4,
    ),
)
def test_artifacts_are_written_for_any_record_that_decodes(
    tmp_path: Path, status: dict[str, Any], events: list[Any]
) -> None:
    # What `decode_record` lets through: a status object, a list of events, an output string.
    record = {"status": status, "events": events, "output": ""}
    job_dir = write_artifacts(tmp_path / "out", "any-id", record)
    for path in (job_dir / "job_events").iterdir():
        assert isinstance(json.loads(path.read_text())["event_data"], dict)


def test_a_payload_of_millions_of_tiny_objects_is_refused_before_it_is_built() -> None:
    # 3 bytes each in the text, a dict each in memory: the bytes limit alone would allow it.
    bomb = zlib.compress(b'{"format": "x", "events": [' + b"{}," * 3_000_000 + b"{}]}", 9)
    assert len(bomb) < 50_000
    with pytest.raises(RecordError, match="more than 2000000 JSON objects and arrays"):
        decode_record(bomb)
