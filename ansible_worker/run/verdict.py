"""How a run ended, judged from Ansible's exit code, its event stream and its last lines of output."""

from __future__ import annotations

import signal

from ansible_worker.protocol.models import State
from ansible_worker.run.events.event_fifo import EventFifo
from ansible_worker.run.events.progress import Progress
from ansible_worker.run.process.output_tail import OutputTail


def judge(returncode: int, progress: Progress, tail: OutputTail, fifo: EventFifo) -> tuple[State, str | None]:
    """The terminal state and error message of a run that exited with `returncode`.

    A failing run is reported by what failed; a run that exited 0 succeeded only if its
    event stream was complete and readable, since the counts come from it.
    """
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        task = progress.current_task
        during = f" during task '{task}'" if task else ""
        return State.FAILED, f"ansible-playbook was killed by {name}{during}"
    if returncode != 0:
        if progress.first_failure is not None:
            return State.FAILED, progress.first_failure
        return State.FAILED, f"ansible-playbook exited with code {returncode}: {ansible_error(tail)}"
    if fifo.invalid_lines:
        return State.FAILED, (
            f"ansible-playbook sent {fifo.invalid_lines} unreadable event lines (exit code 0):"
            " its counts cannot be trusted"
        )
    if not fifo.opened:
        return State.FAILED, "ansible-playbook exited 0 but sent no events: the event plugin did not run"
    if not progress.stats_seen:
        return State.FAILED, "ansible-playbook exited 0 without its final statistics: the run was cut short"
    return State.SUCCESS, None


def ansible_error(tail: OutputTail) -> str:
    """Ansible's own error line (`[ERROR]: ...`, or `ERROR! ...` before 2.19), else the last lines."""
    lines = tail.last_lines(200)
    for index, line in enumerate(lines):
        if line.startswith(("[ERROR]", "ERROR!")):
            origin = lines[index + 1] if index + 1 < len(lines) and lines[index + 1].startswith("Origin:") else ""
            return f"{line} {origin}".strip()[:1000]
    return (" | ".join(lines[-3:]) or "no output")[-1000:]
