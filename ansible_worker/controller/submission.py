"""Make a job ready to submit: its task_id, its shipped tree, its signature, and how often it may be published."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ansible_worker.controller.job_handle import checked_task_id
from ansible_worker.controller.shipping import ContentPublisher, Shipment, ShipProgress
from ansible_worker.controller.shipping import ship as ship_tree

if TYPE_CHECKING:
    from ansible_worker.protocol.signing import Signer


def most_attempts(answer_within: float, retry_after: float, attempts: int | None) -> int | None:
    """How many times a job may be published: `attempts`, else as often as `answer_within` allows (None: no end).

    Errors: `ValueError` for a `retry_after` that is not positive, or `attempts` below 1.
    """
    if retry_after <= 0:
        raise ValueError(f"retry_after must be positive, not {retry_after!r}")
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts!r}")
    if attempts is None and math.isfinite(answer_within / retry_after):
        return max(1, math.ceil(answer_within / retry_after))
    return attempts


async def job_payload(
    publisher: ContentPublisher,
    job: Mapping[str, Any],
    *,
    signer: Signer | None,
    ship: Path | None,
    retention: int,
    progress: ShipProgress | None,
) -> tuple[str, bytes, Shipment | None]:
    """The job's task_id, the bytes to publish, and what was shipped with it.

    A task_id is made up when the job has none. With `ship`, the directory is shipped
    (`shipping.ship`) and the job names it as its `content`; with a `signer`, the job is
    then signed, and published as it is signed.

    Errors: `ValueError` for a `task_id` that is not one, before anything is shipped;
    `ShipError`; `SignatureRefused` for a job with no canonical form to sign.
    """
    request = dict(job)
    request.setdefault("task_id", f"job-{uuid.uuid4().hex[:12]}")
    task_id = checked_task_id(request["task_id"])
    shipment: Shipment | None = None
    if ship is not None:
        shipment = await ship_tree(publisher, ship, retention=retention, progress=progress)
        request["content"] = shipment.content
    if signer is not None:
        request = signer.sign(publisher.topics.tasks, request)
    return task_id, json.dumps(request).encode(), shipment
