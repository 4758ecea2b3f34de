"""The store's live pages of running jobs: bounded, their hosts known, each sent only to the browsers showing its job."""

from __future__ import annotations

import pytest
import trio

from ansible_worker.dashboard.limits import JOB_HOSTS, LIVE_VIEWS_BYTES, ROW_TEXT
from ansible_worker.dashboard.store import Store
from tests.dashboard.events import Events, two_hosts_one_failing


def test_the_store_bounds_live_pages_and_the_hosts_it_knows() -> None:
    store = Store()
    store.set_status("big", {"task_id": "big", "state": "running"}, size=10)
    events = Events()
    events.task("Print", 0, "t1")
    text = "x" * 1000
    for index in range(400):
        events.result("ok", f"h{index}", 1, 0.1, "t1", result={"stdout": text})
    for event in events.items:
        store.add_event("big", event)
    assert store.jobs_on_host("H39") == ["big"]
    assert len(store.hosts.by_job["big"]) == 400
    # Many jobs heard at once: the pages of those silent longest go, within the bound.
    per_job = store.live.views["big"].cost
    jobs = LIVE_VIEWS_BYTES // per_job + 5
    for job in range(jobs):
        store.set_status(f"j{job}", {"task_id": f"j{job}", "state": "running"}, size=10)
        for event in events.items:
            store.add_event(f"j{job}", event)
    assert sum(view.cost for view in store.live.views.values()) <= LIVE_VIEWS_BYTES
    assert "big" not in store.live.views
    assert f"j{jobs - 1}" in store.live.views
    assert store.live_page("big").data()["tasks"] == []
    # At most JOB_HOSTS names a job.
    for index in range(JOB_HOSTS + 10):
        store.note_hosts("big", [f"more{index}"])
    assert len(store.hosts.by_job["big"]) == JOB_HOSTS


def test_a_long_host_name_heard_again_is_counted_once() -> None:
    store = Store()
    store.set_status("j", {"task_id": "j", "state": "running"}, size=10)
    name = "h" * (ROW_TEXT + 50)
    for _ in range(5):
        store.note_hosts("j", [name, "short"])
    assert store.hosts.by_job["j"] == {name[:ROW_TEXT], "short"}
    assert store.hosts.entries == 2


def test_a_live_page_is_sent_to_the_browser_showing_its_job_only() -> None:
    store = Store()
    store.set_status("j", {"task_id": "j", "state": "running"}, size=10)
    events = two_hosts_one_failing().items
    with store.listen("j") as (first, receive), store.listen(None) as (_, other):
        assert first["job"]["live"]["tasks"] == []
        for event in events:
            store.add_event("j", event)
        messages = []
        while True:
            try:
                messages.append(receive.receive_nowait())
            except trio.WouldBlock:
                break
        with pytest.raises(trio.WouldBlock):  # the list's browser got nothing of it
            other.receive_nowait()
    kinds = [message["type"] for message in messages]
    assert set(kinds) == {"event"}
    assert messages[-1]["view"]["cell"] == [3, 0, "o", 0.2]
    # A browser that opens the job now gets the same page whole.
    page = store.snapshot("j")["job"]["live"]
    assert [task["cells"] for task in page["tasks"]] == ["oo", "cc", "sf", "o-"]
    store.set_status("j", {"task_id": "j", "state": "failed"}, size=10)
    assert store.snapshot("j")["job"]["live"] is None  # an ended job's page comes from its record
