"""Run up to `concurrency` jobs at once, in the order the job table queued them."""

from __future__ import annotations

from collections.abc import Callable

import trio

from ansible_worker.run.job import Job
from ansible_worker.run.runner import JobRunner


class Dispatcher:
    """The slots: each takes the next job from the table's queue and runs it to its end.

    The table owns the queue and the jobs' phases; a slot only runs what it takes, skipping a
    job that ended or was handed back while it waited. `serve` returns once the table has
    closed the queue (`JobTable.stop_taking`) and the last running job has posted its
    terminal status.
    """

    def __init__(
        self,
        runner: JobRunner,
        queue: trio.MemoryReceiveChannel[Job],
        *,
        concurrency: int,
        taken: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.runner = runner
        self.queue = queue
        self.concurrency = concurrency
        # Told of each job a slot takes, so that the jobs behind it can say their new place.
        self.taken = taken

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run `concurrency` slots that take jobs from the queue, until it is closed and drained.

        Cancellation: each running job ends its process group (within its kill grace) and
        posts its terminal status before this returns.
        """
        async with trio.open_nursery() as nursery:
            for _ in range(self.concurrency):
                nursery.start_soon(self._serve_slot)
            task_status.started()

    async def _serve_slot(self) -> None:
        async for job in self.queue:
            self.taken(job)
            if not job.settled:
                await self.runner.execute(job)
