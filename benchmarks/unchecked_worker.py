"""`ansible-worker run` without the check of a task_id's retained status: the baseline that shows what the check costs.

Only for `run.py`'s side-by-side figure: a worker run this way keeps a task_id from running
twice only while its claim lives (`worker.claim_lifetime`).
"""

from __future__ import annotations

import sys

from ansible_worker.cli import main
from ansible_worker.worker.claiming import Claimer


async def _no_past(self: Claimer, task_id: str, digest: str | None) -> bytes | None:
    return None


if __name__ == "__main__":
    Claimer._status_of_the_past = _no_past  # type: ignore[method-assign]
    raise SystemExit(main(sys.argv[1:]))
