"""The Python client's own promises, against a real broker."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import Broker, client_for


async def test_a_follow_cancelled_while_it_subscribes_leaves_nothing_behind(broker: Broker, group: str) -> None:
    async with client_for(broker, group) as client:
        before = (client.session.subscriptions.routes(), client.session.subscriptions.uses())
        # Cancelled at its first checkpoint: inside `JobHandle.open`, after the registration.
        with trio.move_on_after(0) as scope:
            await client.follow("never-ran")
        assert scope.cancelled_caught
        assert (client.session.subscriptions.routes(), client.session.subscriptions.uses()) == before
        # And the client still works for the same job.
        assert await client.status("never-ran") is None


async def test_a_task_id_that_is_not_one_is_refused_before_it_reaches_a_topic(broker: Broker, group: str) -> None:
    async with client_for(broker, group) as client:
        before = (client.session.subscriptions.routes(), client.session.subscriptions.uses())
        for bad in ("#", "+", "a/b", "a+b", "", "x" * 129, "é"):
            with trio.fail_after(5):
                for call in (
                    lambda b=bad: client.follow(b),
                    lambda b=bad: client.status(b),
                    lambda b=bad: client.record(b),
                    lambda b=bad: client.cancel(b),
                    lambda b=bad: client.forget(b),
                    lambda b=bad: client.submit({"task_id": b, "playbook": "a.yml", "inventory": "h"}),
                ):
                    with pytest.raises(ValueError, match="not a task_id"):
                        await call()
        assert (client.session.subscriptions.routes(), client.session.subscriptions.uses()) == before
        # The link never dropped, and a real task_id still works.
        assert client.session.connections == 1
        assert await client.status("never-ran") is None
