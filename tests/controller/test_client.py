"""The Python client's own promises, against a real broker."""

from __future__ import annotations

import trio

from tests.conftest import Broker, client_for


async def test_a_follow_cancelled_while_it_subscribes_leaves_nothing_behind(broker: Broker, group: str) -> None:
    async with client_for(broker, group) as client:
        before = (list(client._routes), dict(client._subscribed))
        # Cancelled at its first checkpoint: inside `JobHandle.open`, after the registration.
        with trio.move_on_after(0) as scope:
            await client.follow("never-ran")
        assert scope.cancelled_caught
        assert (client._routes, client._subscribed) == before
        # And the client still works for the same job.
        assert await client.status("never-ran") is None
