"""`history.keep`: remove the jobs that began longer ago than that, in the background, a batch per transaction."""

from __future__ import annotations

import logging
import time

import trio

from ansible_worker.history.reader import History, HistoryError

log = logging.getLogger(__name__)

# Between two batches of one clean-up: the archiver's writes go first.
BATCH_PAUSE = 0.05


async def purge_once(history: History, keep_seconds: int, batch: int) -> int:
    """Remove every job that began more than `keep_seconds` ago, `batch` per transaction; how many.

    Cancellation: the batches done so far are removed; the rest wait for the next clean-up.
    """
    before = time.time() - keep_seconds
    removed = 0
    while True:
        done = await history.purge(before=before, batch=batch)
        removed += done
        if done < batch:
            return removed
        await trio.sleep(BATCH_PAUSE)


async def purge_forever(history: History, keep_seconds: int, every: float, batch: int) -> None:
    """Clean up now, then every `every` seconds, until cancelled. A failure is logged and tried next time."""
    while True:
        try:
            removed = await purge_once(history, keep_seconds, batch)
        except HistoryError as exc:
            log.warning("history clean-up failed, trying again in %.0fs: %s", every, exc)
        else:
            if removed:
                log.info("removed %d jobs older than %ds from history", removed, keep_seconds)
        await trio.sleep(every)
