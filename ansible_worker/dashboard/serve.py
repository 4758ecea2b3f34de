"""Run the dashboard: one broker client, the feed into the store, and hypercorn's Trio server, in one nursery."""

from __future__ import annotations

import logging
import math
from contextlib import AsyncExitStack

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ansible_worker.controller.client import ClientError, Target, open_client
from ansible_worker.dashboard.access import Listen
from ansible_worker.dashboard.app import Dashboard
from ansible_worker.dashboard.feed import follow_group
from ansible_worker.dashboard.store import Store

log = logging.getLogger(__name__)


async def serve(
    target: Target,
    listen: Listen,
    *,
    token: str | None,
    allow_actions: bool,
    max_task_age: float = 300,
    max_clock_skew: float = 60,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect to the broker, then serve the page until cancelled; `task_status` gets its URL.

    Run again signs a request again only if it was at most `max_task_age` seconds old (and
    at most `max_clock_skew` ahead) when the dashboard heard it.

    The client reconnects for ever: a dashboard outlives broker restarts and shows a banner meanwhile.

    Cancellation: runs until cancelled; the server, the feed and the client end with it.
    With `target.history`, the job list, its filters and a job's page read the history store;
    live changes still come from the broker.

    Errors: `ClientError` when the broker or the history store cannot be reached at first;
    `OSError` when the address cannot be bound.
    """
    store = Store()
    async with AsyncExitStack() as stack:
        history = None
        if target.history is not None:
            # Only with a store: a dashboard of the broker alone never loads SQLAlchemy.
            from ansible_worker.history.reader import HistoryError, open_history

            try:
                history = await stack.enter_async_context(open_history(target.history))
            except HistoryError as exc:
                raise ClientError(str(exc)) from None
        client = await stack.enter_async_context(open_client(target, reconnect_for=math.inf))
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(follow_group, client, store)
        dashboard = Dashboard(
            store,
            client,
            token=token,
            allow_actions=allow_actions,
            listen_host=listen.host,
            max_task_age=max_task_age,
            max_clock_skew=max_clock_skew,
            history=history,
        )
        config = Config()
        config.bind = [listen.bind]
        config.accesslog = None
        # Streams stay open for as long as a page is shown; shutdown cancels them at once.
        config.graceful_timeout = 0.5
        binds = await nursery.start(hypercorn_serve, dashboard.app(), config)
        url = binds[0] if binds else f"http://{listen.bind}"
        # The page is at the bound address; 0.0.0.0 is not a place a browser can go.
        print(f"dashboard at {url}/", flush=True)
        task_status.started(url)
