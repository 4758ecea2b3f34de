"""Which hosts each job ran on, as far as the dashboard heard: the job list's host filter, bounded."""

from __future__ import annotations

from ansible_worker.dashboard.limits import ALL_JOB_HOSTS, JOB_HOSTS, ROW_TEXT


class JobHosts:
    """Each job's host names, cut to `ROW_TEXT`; the dict's order that of the last change.

    At most `JOB_HOSTS` names a job, and `ALL_JOB_HOSTS` for all jobs together: the jobs
    heard of least recently lose theirs first.
    """

    def __init__(self) -> None:
        self.by_job: dict[str, set[str]] = {}
        self.entries = 0

    def note(self, task_id: str, names: list[str]) -> None:
        """`task_id` ran on these hosts."""
        known = self.by_job.pop(task_id, None)
        if known is None:
            known = set()
        self.by_job[task_id] = known
        for name in names:
            if len(known) >= JOB_HOSTS:
                break
            if (short := name[:ROW_TEXT]) not in known:
                known.add(short)
                self.entries += 1
        while self.entries > ALL_JOB_HOSTS and len(self.by_job) > 1:
            self.drop(next(iter(self.by_job)))

    def drop(self, task_id: str) -> None:
        """Forget the hosts of `task_id`."""
        self.entries -= len(self.by_job.pop(task_id, ()))

    def jobs_on(self, text: str) -> list[str]:
        """The task_ids of the jobs that ran on a host whose name contains `text` (any case)."""
        wanted = text.casefold()
        return [task_id for task_id, hosts in self.by_job.items() if any(wanted in h.casefold() for h in hosts)]
