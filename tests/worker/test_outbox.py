"""The outbox keeps every change of state and paces running updates."""

from __future__ import annotations

import trio
import trio.testing

from ansible_worker.protocol.models import JobStatus, State
from ansible_worker.worker.outbox import StatusOutbox


def status(state: State, total: int = 0) -> JobStatus:
    return JobStatus(task_id="j", state=state, tasks_total=total)


async def test_outbox_keeps_every_state_change_and_paces_running_updates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = StatusOutbox(interval=1.0)
    outbox.post(status(State.QUEUED))
    outbox.post(status(State.RUNNING, 0))
    outbox.post(status(State.RUNNING, 1))
    taken = []
    for _ in range(2):
        item = await outbox.take()
        outbox.sent(item)
        taken.append((item.state, item.tasks_total))
    assert taken == [(State.QUEUED, 0), (State.RUNNING, 1)]
    start = trio.current_time()
    outbox.post(status(State.RUNNING, 2))
    outbox.post(status(State.RUNNING, 3))
    item = await outbox.take()
    assert (item.tasks_total, trio.current_time() - start) == (3, 1.0)
    outbox.sent(item)
    outbox.post(status(State.RUNNING, 4))
    outbox.post(status(State.SUCCESS, 5))
    before = trio.current_time()
    first = await outbox.take()
    # A paced update with a change of state behind it goes at once, not after the interval.
    assert trio.current_time() == before
    outbox.put_back(first)  # the broker went away: it goes out again, first
    again = await outbox.take()
    outbox.sent(again)
    final = await outbox.take()
    outbox.sent(final)
    assert (again.tasks_total, final.state) == (4, State.SUCCESS)
    with trio.fail_after(1):
        await outbox.wait_idle()
