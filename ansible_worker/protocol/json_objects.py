"""Read one JSON object from what the network or a store hands over, within a size cap; None for anything else.

The one parse behind every reader that drops what it cannot use (a claim, a lock message, a
presence, a status the controller watches): nothing it is given can raise out of it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_object"]


def json_object(payload: bytes | str, *, max_bytes: int | None = None) -> dict[str, Any] | None:
    """The JSON object in `payload`, or None: for an empty payload (a cleared retained message),
    one longer than `max_bytes` (checked before parsing), one that is not JSON, and any other value.

    RecursionError is a value too deeply nested to read; a ValueError covers text that is not
    UTF-8 and a number of more digits than Python converts.
    """
    if not payload or (max_bytes is not None and len(payload) > max_bytes):
        return None
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None
