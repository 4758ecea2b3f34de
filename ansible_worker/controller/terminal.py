"""Talk with the person at a terminal: errors with exit codes, JSON lines, remarks, Ctrl-C, questions, progress."""

from __future__ import annotations

import json
import os
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TextIO, TypeVar

import trio
from rich.console import Console

from ansible_worker.controller.payloads import finite

T = TypeVar("T")

PROMPT_SECONDS = 60.0
# Trees smaller than this are shipped without a progress bar.
PROGRESS_FROM_BYTES = 4 << 20


class CommandError(Exception):
    """Ends a command with a message for the person and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def print_json_line(console: Console, value: object) -> None:
    """One compact JSON object on one line of stdout, for scripts: `--json` prints only these.

    Written past rich, which would wrap long lines and turn `:smile:` in Ansible's text into emoji.
    """
    try:
        line = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        # NaN or Infinity from an event: strict JSON has no such numbers, so they become null.
        line = json.dumps(finite(value), separators=(",", ":"))
    console.file.write(line + "\n")
    console.file.flush()


def note(console: Console, text: str, *, as_json: bool) -> None:
    """A remark for the person; with `--json` it goes to stderr, so stdout stays JSON lines."""
    if as_json:
        print(text, file=sys.stderr, flush=True)
    else:
        console.print(text, style="dim")


async def until_interrupted(work: Callable[[], Awaitable[T]], interrupts: AsyncIterator[int]) -> tuple[T | None, bool]:
    """Run `work` until it returns or Ctrl-C arrives; say which happened.

    `work` should not raise: an error of its own would leave this wrapped in an exception group.
    """
    result: T | None = None
    interrupted = False
    async with trio.open_nursery() as nursery:

        async def run_work() -> None:
            nonlocal result
            result = await work()
            nursery.cancel_scope.cancel()

        async def wait_for_interrupt() -> None:
            nonlocal interrupted
            async for _ in interrupts:
                interrupted = True
                nursery.cancel_scope.cancel()
                return

        nursery.start_soon(run_work)
        nursery.start_soon(wait_for_interrupt)
    return result, interrupted


async def ask_yes_no(console: Console, question: str, interrupts: AsyncIterator[int]) -> bool:
    """Ask on the terminal; no answer within a minute, or another Ctrl-C, means no.

    Cancellation: the duplicate of stdin is closed and stdin made blocking again; the
    question stays unanswered on the terminal.
    """
    console.print(question, end="", markup=False)
    fd = os.dup(sys.stdin.fileno())
    stream = trio.lowlevel.FdStream(fd)
    try:
        answer, interrupted = await until_interrupted(lambda: _read_line(stream), interrupts)
    finally:
        await stream.aclose()
        # FdStream made the shared terminal non-blocking; give the shell back a blocking one.
        os.set_blocking(sys.stdin.fileno(), True)
    if interrupted:
        console.print()
    return (answer or "").strip().lower() in ("y", "yes")


async def ask_line(console: Console, prompt: str, *, secret: bool = False) -> str | None:
    """Ask for one line on the terminal; a secret is not echoed. None when no answer came within a minute.

    Cancellation: the duplicate of stdin is closed, echo is restored and stdin made blocking again.
    """
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if secret else None
    if saved is not None:
        # Before the prompt shows: what is typed after it must never be echoed.
        quiet = list(saved)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(stdin, termios.TCSADRAIN, quiet)
    console.print(prompt, end="", markup=False)
    stream = trio.lowlevel.FdStream(os.dup(stdin))
    try:
        line = await _read_line(stream)
    finally:
        await stream.aclose()
        os.set_blocking(stdin, True)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            console.print()
    return line.rstrip("\r\n") if line.endswith("\n") else None


async def _read_line(stream: trio.lowlevel.FdStream) -> str:
    data = b""
    with trio.move_on_after(PROMPT_SECONDS):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(1024)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


class ProgressBar:
    """`[#####-----] 48% packing 12.3 of 25.6 MB` on a terminal, redrawn in place; silent elsewhere."""

    def __init__(self, stream: TextIO = sys.stderr, *, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.active = stream.isatty()
        self._shown: tuple[str, int] | None = None
        self._large = False

    def __call__(self, done: int, total: int, stage: str) -> None:
        if stage == "packing":
            self._large = total >= PROGRESS_FROM_BYTES
        if not self.active or not self._large or total <= 0:
            return
        percent = done * 100 // total
        if self._shown == (stage, percent):
            return
        self._shown = (stage, percent)
        filled = self.width * done // total
        bar = "#" * filled + "-" * (self.width - filled)
        amount = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if stage == "packing" else f"part {done} of {total}"
        self.stream.write(f"\r[{bar}] {percent:3d}% {stage} {amount}   ")
        self.stream.flush()

    def finish(self, text: str) -> None:
        """Replace the bar (on a terminal) by a line that says what was shipped; the line is written anyway."""
        if self.active and self._shown is not None:
            self.stream.write("\r" + " " * (self.width + 40) + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
