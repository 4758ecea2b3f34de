"""One row of the job table: a job's phase, its request and claim, a pending cancel, and its run."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ansible_worker.protocol.models import CancelRequest, TaskRequest
from ansible_worker.run.job import Job
from ansible_worker.worker.phases import Phase

__all__ = ["JobEntry"]


@dataclass(frozen=True, slots=True)
class JobEntry:
    """A job as the table holds it now; the table replaces the entry at each change, so a copy never changes."""

    phase: Phase
    # None only for a job reported again from the journal, whose request is not read.
    request: TaskRequest | None
    # The message as it came (or as its signature covers it), to journal and hand back.
    payload: bytes = b""
    # The claim under which this worker holds the job, once the group agreed.
    claim_id: str | None = None
    # A cancel request that came while the job could not end at once (claiming, handing back).
    cancel: CancelRequest | None = None
    # The job as it runs, from the moment it is queued.
    job: Job | None = None

    def moved(self, phase: Phase) -> JobEntry:
        """This entry in `phase`; settling, it keeps only its claim (its request and its run may be large)."""
        if phase is Phase.SETTLING:
            return JobEntry(phase, None, claim_id=self.claim_id)
        return replace(self, phase=phase)
