"""The dashboard's pure parts: ANSI colours, listen and token checks, and what hostile broker messages do to the store."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import trio

import ansible_worker.dashboard
from ansible_worker.controller.client import Client
from ansible_worker.controller.relaunch import not_ours
from ansible_worker.dashboard.access import AccessError, check_listen, parse_listen, same_origin, token_ok
from ansible_worker.dashboard.ansi import ansi_parts
from ansible_worker.dashboard.feed import route
from ansible_worker.dashboard.limits import (
    EVICT_BATCH,
    LINE_CHARS,
    MAX_JOBS,
    OUTPUT_BYTES,
    OUTPUT_JOBS,
    OUTPUT_LINES,
    REQUESTS,
    REQUESTS_BYTES,
    STATUS_BYTES,
)
from ansible_worker.dashboard.store import Store
from ansible_worker.mqtt.link import InboundMessage
from ansible_worker.protocol.signing import Signer, generate_key_pair
from ansible_worker.protocol.topics import Topics

TOPICS = Topics("ansible", "web")


def message(topic: str, payload: bytes, *, retain: bool = False) -> InboundMessage:
    return InboundMessage(topic=topic, payload=payload, qos=1, retain=retain)


def test_colours_become_parts_with_our_own_classes() -> None:
    assert ansi_parts("\x1b[0;32mok: [h1]\x1b[0m") == ("ok: [h1]", [("ansi-fg-green", "ok: [h1]")])
    assert ansi_parts("\x1b[1;31mfatal\x1b[0m x") == ("fatal x", [("ansi-bold ansi-fg-red", "fatal"), ("", " x")])
    assert ansi_parts("plain") == ("plain", None)


def test_a_hostile_line_stays_text_and_loses_its_escapes() -> None:
    text, parts = ansi_parts('<img src=x onerror="alert(1)">\x1b[31m<script>\x1b]0;title\x07\x1b[2J')
    # Text, never markup: the page sets it with textContent, with no class but the dashboard's own.
    assert text == '<img src=x onerror="alert(1)"><script>]0;title'
    assert parts == [("", '<img src=x onerror="alert(1)">'), ("ansi-fg-red", "<script>]0;title")]
    assert "\x1b" not in text
    assert "\x07" not in text


def test_the_page_never_makes_markup_of_text() -> None:
    static = Path(ansible_worker.dashboard.__file__).parent / "static"
    scripts = sorted(static.glob("*.js"))
    assert len(scripts) >= 4
    for script in scripts:
        source = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{script.name} uses {sink}"


def test_a_colour_code_of_any_length_is_dropped_not_fatal() -> None:
    # Python refuses to turn more than 4,300 digits into an int; a task name can hold that many.
    line = "\x1b[" + "9" * 5000 + "mx\x1b[0;" + "3" * 5000 + ";32my"
    assert ansi_parts(line) == ("xy", [("", "x"), ("ansi-fg-green", "y")])
    store = Store()
    route(store, TOPICS, message("ansible/web/tasks/j/events", json.dumps({"seq": 1, "line": line}).encode()))
    assert store.live.output["j"][0]["parts"] == [("", "x"), ("ansi-fg-green", "y")]


def test_listen_addresses_and_tokens() -> None:
    assert parse_listen("127.0.0.1:8470").port == 8470
    assert parse_listen("[::1]:80").bind == "[::1]:80"
    with pytest.raises(AccessError, match="HOST:PORT"):
        parse_listen("8470")
    with pytest.raises(AccessError, match="port"):
        parse_listen("0.0.0.0:99999")
    check_listen(parse_listen("localhost:1"), None)
    with pytest.raises(AccessError, match="--token"):
        check_listen(parse_listen("0.0.0.0:8470"), None)
    with pytest.raises(AccessError, match="16 characters"):
        check_listen(parse_listen("0.0.0.0:8470"), "short")
    check_listen(parse_listen("0.0.0.0:8470"), "x" * 16)
    assert token_ok(None, None)
    assert not token_ok("secret-token-abcdef", None)
    assert not token_ok("secret-token-abcdef", "secret-token-abcdeg")
    assert same_origin(None, "127.0.0.1:1")
    assert same_origin("http://127.0.0.1:1", "127.0.0.1:1")
    assert not same_origin("http://evil.example", "127.0.0.1:1")
    assert not same_origin("null", "127.0.0.1:1")


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"[1,2]", b'{"state": 5}', b"{" * 100_000, b'"text"', b"\xff\xfe", b"1e999999"],
)
def test_hostile_messages_are_skipped_and_lose_nothing(payload: bytes) -> None:
    store = Store()
    route(store, TOPICS, message("ansible/web/tasks/ok/status", b'{"state": "running", "playbook": "a.yml"}'))
    route(store, TOPICS, message("ansible/web/workers/w1", b'{"state": "online"}'))
    for topic in (
        "ansible/web/tasks/bad/status",
        "ansible/web/tasks/ok/events",
        "ansible/web/tasks/../status",
        "ansible/web/tasks",
        "ansible/web/workers/w2",
        "ansible/web/tasks/ok/status/extra",
    ):
        if payload == b"" and topic.endswith(("bad/status", "w2")):
            continue  # an empty retained message is a deliberate clear
        route(store, TOPICS, message(topic, payload))
    assert store.jobs["ok"]["state"] == "running"
    assert store.workers["w1"]["state"] == "online"
    assert "bad" not in store.jobs
    assert set(store.jobs) == {"ok"}


def test_the_topic_names_the_job_whatever_the_body_says() -> None:
    store = Store()
    route(store, TOPICS, message("ansible/web/tasks/real/status", b'{"task_id": "other", "state": "queued"}'))
    assert store.jobs["real"]["task_id"] == "real"
    assert "other" not in store.jobs


def test_a_refused_copy_does_not_hide_a_running_job() -> None:
    store = Store()
    route(store, TOPICS, message("ansible/web/tasks/j/status", b'{"state": "running"}'))
    route(store, TOPICS, message("ansible/web/tasks/j/status", b'{"state": "failed", "refused": true}'))
    assert store.jobs["j"]["state"] == "running"


def test_a_request_is_kept_for_run_again_and_a_cleared_status_forgets_the_job() -> None:
    store = Store()
    route(store, TOPICS, message("ansible/web/tasks", b'{"task_id": "j", "playbook": "a.yml", "inventory": "h"}'))
    route(store, TOPICS, message("ansible/web/tasks", b'{"task_id": "bad id!", "playbook": "a.yml"}'))
    route(store, TOPICS, message("ansible/web/tasks/j/status", b'{"state": "success"}'))
    assert store.requests == {"j": {"task_id": "j", "playbook": "a.yml", "inventory": "h"}}
    assert store.rows()[0]["can_run_again"] is True
    route(store, TOPICS, message("ansible/web/tasks/j/status", b"", retain=True))
    assert store.jobs == {}


def test_jobs_are_listed_newest_first() -> None:
    store = Store()
    for name, created in (("a", "2026-01-01T00:00:01Z"), ("c", "2026-01-01T00:00:03Z"), ("b", "2026-01-01T00:00:02Z")):
        status = f'{{"state": "success", "created_at": "{created}"}}'.encode()
        route(store, TOPICS, message(f"ansible/web/tasks/{name}/status", status))
    assert [row["task_id"] for row in store.rows()] == ["c", "b", "a"]


def test_event_lines_keep_ansible_colours_as_kinds_and_stay_text() -> None:
    store = Store()
    event = (
        b'{"seq": 1, "event": "runner_on_failed", "status": "failed", "host": "<b>h</b>", "line": "fatal: [<b>h</b>]"}'
    )
    route(store, TOPICS, message("ansible/web/tasks/j/events", event))
    line = store.live.output["j"][0]
    # Coloured by the page from its kind, and set there as text: `<b>` is shown, never made bold.
    assert line == {"id": 1, "text": "fatal: [<b>h</b>]", "kind": "failed", "host": "<b>h</b>"}


def test_a_flood_of_made_up_jobs_keeps_memory_bounded() -> None:
    store = Store()
    for index in range(OUTPUT_JOBS + 50):
        route(store, TOPICS, message(f"ansible/web/tasks/j{index}/events", b'{"seq": 1, "line": "x"}'))
    for index in range(REQUESTS + 5):
        route(store, TOPICS, message("ansible/web/tasks", f'{{"task_id": "r{index}"}}'.encode()))
    assert len(store.live.output) == OUTPUT_JOBS
    assert len(store.live.views) <= OUTPUT_JOBS
    assert f"j{OUTPUT_JOBS + 49}" in store.live.output
    assert "j0" not in store.live.output
    assert len(store.requests) == REQUESTS
    assert "r0" not in store.requests


def test_the_dashboard_imports_neither_the_worker_nor_the_runner() -> None:
    package = Path(ansible_worker.dashboard.__file__).parent
    imported = set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "ansible_worker.controller.client" in imported  # the check sees imports at all
    assert not {name for name in imported if name.startswith(("ansible_worker.worker", "ansible_worker.run"))}


def test_a_later_copy_of_a_request_never_replaces_the_first() -> None:
    store = Store()
    route(store, TOPICS, message("ansible/web/tasks", b'{"task_id": "j", "playbook": "site.yml", "inventory": "h"}'))
    forged = b'{"task_id": "j", "playbook": "site.yml", "inventory": "h", "extra_vars": {"x": 1}}'
    route(store, TOPICS, message("ansible/web/tasks", forged))
    assert store.requests["j"] == {"task_id": "j", "playbook": "site.yml", "inventory": "h"}


def test_the_times_requests_were_heard_stay_bounded() -> None:
    store = Store()
    for index in range(3 * REQUESTS):
        route(store, TOPICS, message("ansible/web/tasks", f'{{"task_id": "h{index}"}}'.encode()))
    assert len(store.heard_at) <= 2 * REQUESTS
    assert set(store.requests) <= set(store.heard_at)


def test_run_again_signs_only_what_its_own_key_signed(tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "dash.key", tmp_path / "dash.pub")
    generate_key_pair(tmp_path / "other.key", tmp_path / "other.pub")
    ours, other = Signer.from_file(tmp_path / "dash.key"), Signer.from_file(tmp_path / "other.key")
    client = cast(Client, SimpleNamespace(signer=ours, topics=TOPICS))
    job = {"task_id": "j", "playbook": "site.yml", "inventory": "h"}
    assert not_ours(ours.sign(TOPICS.tasks, job), client) is None
    for request in (job, other.sign(TOPICS.tasks, job), {**ours.sign(TOPICS.tasks, job), "extra_vars": {"x": 1}}):
        refusal = not_ours(request, client, key="this dashboard's key")
        assert refusal is not None
        assert "not signed by this dashboard's key" in refusal
    # Without a key of its own the dashboard sends requests unsigned: it lends no signature.
    assert not_ours(job, cast(Client, SimpleNamespace(signer=None, topics=TOPICS))) is None


def status(state: str, created: str, **fields: object) -> bytes:
    return json.dumps({"state": state, "created_at": created, **fields}).encode()


def test_past_max_jobs_refusals_go_first_then_the_oldest_finished_and_running_ones_last() -> None:
    store = Store()
    route(store, TOPICS, message("ansible/web/tasks/running/status", status("running", "2026-01-01T00:00:00Z")))
    route(store, TOPICS, message("ansible/web/tasks/queued/status", status("queued", "2026-01-01T00:00:01Z")))
    ran = MAX_JOBS - EVICT_BATCH - 2
    for index in range(ran):
        created = f"2026-01-02T00:00:00.{index:06d}Z"
        route(store, TOPICS, message(f"ansible/web/tasks/ran-{index}/status", status("success", created)))
    # Refusals, newer than every job that ran, up to one job too many: they all go, and nothing else.
    junk = MAX_JOBS + 1 - len(store.jobs)
    for index in range(junk):
        refusal = status("failed", f"2026-02-01T00:00:00.{index:06d}Z", refused=True)
        route(store, TOPICS, message(f"ansible/web/tasks/junk-{index}/status", refusal))
    assert junk > EVICT_BATCH
    assert set(store.jobs) == {"running", "queued", *(f"ran-{index}" for index in range(ran))}
    with store.listen(None) as (first, receive):
        assert len(first["jobs"]) == len(store.jobs)
        # More jobs that ran: the oldest finished ones go, never the running one.
        for index in range(MAX_JOBS):
            created = f"2026-03-01T00:00:00.{index:06d}Z"
            route(store, TOPICS, message(f"ansible/web/tasks/new-{index}/status", status("failed", created)))
        assert len(store.jobs) <= MAX_JOBS
        assert {"running", "queued", f"new-{MAX_JOBS - 1}"} <= set(store.jobs)
        assert "ran-0" not in store.jobs
        # Every browser is told which jobs left the list.
        gone = set()
        while True:
            try:
                change = receive.receive_nowait()
            except trio.WouldBlock:
                break
            if change["type"] == "job" and change["job"] is None:
                gone.add(change["task_id"])
        assert "ran-0" in gone
        assert not gone & set(store.jobs)


def test_when_every_job_is_still_going_the_oldest_go() -> None:
    store = Store()
    for index in range(MAX_JOBS + 1):
        created = f"2026-01-01T00:00:00.{index:06d}Z"
        route(store, TOPICS, message(f"ansible/web/tasks/r{index}/status", status("running", created)))
    assert MAX_JOBS - EVICT_BATCH <= len(store.jobs) <= MAX_JOBS
    assert "r0" not in store.jobs
    assert f"r{MAX_JOBS}" in store.jobs


def test_cleared_and_dropped_jobs_leave_nothing_behind() -> None:
    store = Store()
    for index in range(3 * MAX_JOBS):
        topic = f"ansible/web/tasks/j{index}/status"
        route(store, TOPICS, message("ansible/web/tasks", json.dumps({"task_id": f"j{index}"}).encode()))
        route(store, TOPICS, message(f"ansible/web/tasks/j{index}/events", b'{"seq": 1, "line": "x"}'))
        route(store, TOPICS, message(topic, status("success", "2026-01-01T00:00:00Z")))
        if index % 2:
            route(store, TOPICS, message(topic, b"", retain=True))
    kept = set(store.jobs)
    assert len(kept) <= MAX_JOBS
    assert set(store._first_seen) == kept
    assert set(store.requests) <= kept
    assert set(store.live.output) <= kept


def test_a_big_status_is_kept_by_its_main_fields_and_says_so() -> None:
    store = Store()
    big = status("success", "2026-01-01T00:00:00Z", playbook="site.yml", output={"blob": "b" * STATUS_BYTES})
    route(store, TOPICS, message("ansible/web/tasks/big/status", big))
    kept = store.jobs["big"]
    assert kept["state"] == "success"
    assert kept["playbook"] == "site.yml"
    assert "output" not in kept
    assert "ansible-worker status big" in kept["dashboard_note"]
    assert len(json.dumps(store.snapshot("big"))) < 2 * 1024
    # Each field of a list line is short, whatever the status holds.
    route(store, TOPICS, message("ansible/web/tasks/long/status", status("failed", "x", playbook="p" * 10_000)))
    assert len(json.dumps(store.row("long"))) < 1024


def test_output_is_bounded_in_lines_and_bytes_per_job() -> None:
    store = Store()
    for seq in range(1, 41):
        event = json.dumps({"seq": seq, "line": f"{seq}:" + "y" * 100_000, "host": "h" * 10_000}).encode()
        route(store, TOPICS, message("ansible/web/tasks/j/events", event))
    lines = store.live.output["j"]
    assert sum(len(line["text"]) for line in lines) <= OUTPUT_BYTES
    assert lines[-1]["id"] == 40
    assert all(len(line["text"]) < LINE_CHARS + 100 for line in lines)
    assert lines[-1]["text"].endswith("more characters]")
    assert all(len(line["host"]) <= 257 for line in lines)
    for seq in range(41, OUTPUT_LINES + 100):
        route(store, TOPICS, message("ansible/web/tasks/j/events", json.dumps({"seq": seq, "line": "z"}).encode()))
    assert len(store.live.output["j"]) == OUTPUT_LINES
    assert store.live.output["j"][-1]["id"] == OUTPUT_LINES + 99


def test_requests_are_bounded_in_bytes_and_a_refused_jobs_request_is_dropped() -> None:
    store = Store()
    padding = "v" * (1024 * 1024)
    for index in range(100):
        request = json.dumps({"task_id": f"r{index}", "extra_vars": {"pad": padding}}).encode()
        route(store, TOPICS, message("ansible/web/tasks", request))
    assert 0 < len(store.requests) <= REQUESTS_BYTES // len(padding)
    assert "r99" in store.requests
    assert "r0" not in store.requests
    route(store, TOPICS, message("ansible/web/tasks/r99/status", status("failed", "x", refused=True)))
    assert "r99" not in store.requests
