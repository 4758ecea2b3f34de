"""The phases of a job on this worker and the moves between them: one table, and a named error for a move it lacks.

Pure: no I/O. The job table (`jobs`) keeps each job's phase and makes every move through
`next_phase`, writing the journal as `JOURNAL` says; a status posted for a job makes the
move `status_move` names. A new phase is a member of `Phase`, a row
of `TRANSITIONS` (and the moves that lead into it), and, for a new move, its line in `JOURNAL`.
"""

from __future__ import annotations

import enum

from ansible_worker.protocol.models import State


class Phase(enum.Enum):
    """Where a job this worker knows of is now."""

    # The group is asked whether the job is this worker's.
    CLAIMING = "claiming"
    # Its claim failed: the claim is released and the job refused live (the journal forgot it).
    REFUSING = "refusing"
    # Claimed; waiting in the queue for a slot.
    QUEUED = "queued"
    # A slot runs it.
    RUNNING = "running"
    # Claimed but not to run here: being given back to the group.
    HANDING_BACK = "handing back"
    # Its terminal status is posted; the broker has not acknowledged it yet.
    SETTLING = "settling"
    # Another worker took it over while this one was away: its processes are being ended,
    # and nothing is published for it.
    FENCED = "fenced"


class Move(enum.Enum):
    """What happens to a job."""

    # A new job from the broker: the group is asked for it.
    ACCEPT = "accept"
    # A job the journal kept as queued: the group is asked for it again.
    RESUME = "resume"
    # A job the journal kept as running or ended: its terminal status goes out again.
    REPORT = "report"
    # A job the journal kept that cannot be read: forgotten.
    DROP = "drop"
    # The group agreed: the job waits for a slot (its `queued` status).
    QUEUE = "queue"
    # A slot starts it (its first `running` status).
    START = "start"
    # Its run directory exists: its processes carry its name.
    RUN_IN = "run in"
    # A status that changes no phase: counts while it runs, or the `queued` of a hand-back.
    UPDATE = "update"
    # Claimed while the worker stops, or queued when it stops: given back to the group.
    HAND_BACK = "hand back"
    # A hand-back claims the job back; the claim ids that may hold it change.
    RECLAIM = "reclaim"
    # Its terminal status is posted.
    END = "end"
    # A terminal status replaces one that could not be published.
    REPLACE = "replace"
    # The broker acknowledged its terminal status: nothing is left to do.
    SENT = "sent"
    # Another worker holds it.
    LET_GO = "let go"
    # Its claim failed for good: it is refused before it became this worker's.
    REFUSE = "refuse"
    # Its refusal is out (or given up).
    REFUSED = "refused"
    # Left as the journal has it, for the next start.
    KEEP = "keep"
    # Another worker's claim holds it (a takeover): dropped here, nothing published.
    FENCE = "fence"
    # The same for a running job: its process group is ended first.
    FENCE_RUN = "fence the run of"
    # A fenced job's run is over.
    FENCED_ENDED = "forget the fenced run of"


class Write(enum.Enum):
    """What a move records in the journal (the `Journal` method of the same name)."""

    # The request, its `queued` status and its claim id: a new row.
    ADD = "add"
    # The claim ids that may hold the job after a crash.
    SET_CLAIMS = "set_claims"
    # The status just posted.
    SET_STATUS = "set_status"
    # Where the job runs.
    SET_RUN_DIR = "set_run_dir"
    # The row goes: nothing is left for a restart.
    FORGET = "forget"
    # The row already says what a restart must do.
    NOTHING = "nothing"


# None: the table does not hold the job (before its first move, after its last).
TRANSITIONS: dict[Phase | None, dict[Move, Phase | None]] = {
    None: {
        Move.ACCEPT: Phase.CLAIMING,
        Move.RESUME: Phase.CLAIMING,
        Move.REPORT: Phase.SETTLING,
        Move.DROP: None,
    },
    Phase.CLAIMING: {
        Move.QUEUE: Phase.QUEUED,
        Move.HAND_BACK: Phase.HANDING_BACK,
        # Claimed, but refused a place in the queue.
        Move.END: Phase.SETTLING,
        Move.LET_GO: None,
        Move.REFUSE: Phase.REFUSING,
        Move.KEEP: None,
    },
    Phase.REFUSING: {
        Move.REFUSED: None,
    },
    Phase.QUEUED: {
        Move.START: Phase.RUNNING,
        # What it waits for: its place in the queue, its locks.
        Move.UPDATE: Phase.QUEUED,
        Move.HAND_BACK: Phase.HANDING_BACK,
        Move.END: Phase.SETTLING,
        # It never started here: nothing to end.
        Move.FENCE: None,
    },
    Phase.RUNNING: {
        Move.RUN_IN: Phase.RUNNING,
        Move.UPDATE: Phase.RUNNING,
        Move.END: Phase.SETTLING,
        # Its process group is ended first; the journal keeps where it runs until then.
        Move.FENCE_RUN: Phase.FENCED,
    },
    Phase.FENCED: {
        Move.RUN_IN: Phase.FENCED,
        Move.FENCED_ENDED: None,
    },
    Phase.HANDING_BACK: {
        Move.UPDATE: Phase.HANDING_BACK,
        Move.RECLAIM: Phase.HANDING_BACK,
        Move.END: Phase.SETTLING,
        Move.LET_GO: None,
        Move.KEEP: None,
    },
    Phase.SETTLING: {
        Move.REPLACE: Phase.SETTLING,
        Move.SENT: None,
        Move.FENCE: None,
    },
}

# One write per move, wherever it starts: no transition is journaled twice.
JOURNAL: dict[Move, Write] = {
    Move.ACCEPT: Write.ADD,
    Move.RESUME: Write.SET_CLAIMS,
    Move.REPORT: Write.SET_STATUS,
    Move.DROP: Write.FORGET,
    Move.QUEUE: Write.SET_STATUS,
    Move.START: Write.SET_STATUS,
    Move.RUN_IN: Write.SET_RUN_DIR,
    Move.UPDATE: Write.SET_STATUS,
    Move.HAND_BACK: Write.NOTHING,
    Move.RECLAIM: Write.SET_CLAIMS,
    Move.END: Write.SET_STATUS,
    Move.REPLACE: Write.SET_STATUS,
    Move.SENT: Write.FORGET,
    Move.LET_GO: Write.FORGET,
    Move.REFUSE: Write.FORGET,
    Move.REFUSED: Write.NOTHING,
    Move.KEEP: Write.NOTHING,
    # A queued or settling job goes at once; a running one keeps its row (where it runs) until it ended.
    Move.FENCE: Write.FORGET,
    Move.FENCE_RUN: Write.NOTHING,
    Move.FENCED_ENDED: Write.FORGET,
}


class MoveRefused(Exception):
    """A move the table does not allow from the job's phase: a fault of the worker, not of a message."""


def next_phase(phase: Phase | None, move: Move) -> Phase | None:
    """The phase `move` leads to from `phase` (None: not held). Errors: `MoveRefused`."""
    try:
        return TRANSITIONS[phase][move]
    except KeyError:
        where = phase.value if phase is not None else "not held"
        raise MoveRefused(f"cannot {move.value} a job that is {where}") from None


def status_move(phase: Phase | None, state: State) -> Move:
    """The move a status in `state`, posted for a job in `phase`, makes (`next_phase` judges it)."""
    if state.terminal:
        return Move.END
    if state is State.QUEUED and phase is Phase.CLAIMING:
        return Move.QUEUE
    if state is State.RUNNING and phase is Phase.QUEUED:
        return Move.START
    return Move.UPDATE
