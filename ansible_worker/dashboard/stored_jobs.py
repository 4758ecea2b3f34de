"""The job list's query of the history store, read from the page's filters and checked."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ansible_worker.dashboard.limits import ROW_TEXT
from ansible_worker.protocol.topics import is_task_id

if TYPE_CHECKING:
    # Only for its type: the history package is loaded only when a store is configured.
    from ansible_worker.history.reader import JobQuery

# A page of jobs from the history store: as many as the page shows at once.
STORED_PAGE = 50
# What a stored job's list line shows may be filtered by: the states a status can have.
STATES = ("queued", "running", "success", "failed", "cancelled", "timeout")
# The job list's time filter: how far back each choice reaches, in seconds.
SINCE = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}


def job_query(params: Mapping[str, str]) -> JobQuery:
    """The query of `state`, `playbook`, `worker`, `since` and `before`. Errors: `ValueError` naming the filter."""
    from ansible_worker.history.reader import JobQuery

    wanted = params.get("state") or None
    if wanted is not None and wanted not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    playbook = params.get("playbook", "").strip()
    if len(playbook) > 256:
        raise ValueError("playbook filter: at most 256 characters")
    worker = params.get("worker") or None
    if worker is not None and len(worker) > ROW_TEXT:
        raise ValueError(f"worker filter: at most {ROW_TEXT} characters")
    span = params.get("since") or None
    if span is not None and span not in SINCE:
        raise ValueError(f"since must be one of {', '.join(SINCE)}")
    try:
        before = _cursor(params.get("before"))
    except ValueError:
        raise ValueError("before: the `next` of a previous page") from None
    return JobQuery(
        states=frozenset({wanted}) if wanted else None,
        playbook=f"*{playbook}*" if playbook else None,
        worker=worker,
        since=None if span is None else datetime.now(UTC).timestamp() - SINCE[span],
        limit=STORED_PAGE,
        before=before,
    )


def _cursor(text: str | None) -> tuple[float, str] | None:
    """A page's `before` (`began,task_id`), or None when absent. Errors: `ValueError` when it is not one."""
    if not text:
        return None
    began, _, task_id = text.partition(",")
    moment = float(began)
    if not is_task_id(task_id) or not math.isfinite(moment):
        raise ValueError(text)
    return moment, task_id
