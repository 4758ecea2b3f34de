"""Running commands in a process group of their own, with real child and grandchild processes."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ansible_worker.run.process.launch import ExitRecord, Launch
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import run_process_group, run_with_output

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie that no one reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def written_pid(path: Path) -> int | None:
    """The pid in `path` once a child has written it whole, else None."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


# Other processes give no event to wait on: these poll, and their callers bound them.


async def wait_gone(pid: int) -> None:
    """Until `pid` has ended (bounded by the caller): a SIGKILL takes effect soon, not at once."""
    while alive(pid):  # noqa: ASYNC110
        await trio.sleep(0.01)


async def read_pid(path: Path) -> int:
    """The pid a child wrote to `path`, once it has written it (bounded by the caller)."""
    while (pid := written_pid(path)) is None:  # noqa: ASYNC110
        await trio.sleep(0.01)
    return pid


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids of processes a test started; any still alive at the end are killed, so none outlives the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def run(
    argv: list[str], tmp_path: Path, *, limit: int = 65536, kill_grace: float = 5.0
) -> tuple[int, OutputTail]:
    tail = OutputTail(limit)
    code = await run_with_output(
        Launch(tuple(argv), tmp_path, ENV, kill_grace=kill_grace), tail=tail, record=ExitRecord()
    )
    return code, tail


async def test_the_exit_code_is_returned_and_recorded(tmp_path: Path) -> None:
    """The command's exit code is the result and is in the record; no group was signalled."""
    record = ExitRecord()
    read_fd, write_fd = os.pipe()
    try:
        with trio.fail_after(10):
            launch = Launch(("sh", "-c", "exit 3"), tmp_path, ENV, kill_grace=1, output_fd=write_fd)
            code = await run_process_group(launch, record)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert code == 3
    assert (record.returncode, record.signalled_group) == (3, False)


async def test_stdout_and_stderr_are_kept(tmp_path: Path) -> None:
    """Both streams go to the tail, in the order they were written; the command runs in `cwd` with `env`."""
    (tmp_path / "here").write_text("")
    with trio.fail_after(10):
        code, tail = await run(["sh", "-c", 'echo out; echo err >&2; ls; echo "$PATH"'], tmp_path)
    assert code == 0
    assert tail.last_lines(4) == ["out", "err", "here", ENV["PATH"]]


async def test_stdin_is_dev_null(tmp_path: Path) -> None:
    """Nothing can wait for a person: reading standard input meets its end at once."""
    with trio.fail_after(10):
        code, tail = await run(["sh", "-c", "cat; echo read-done"], tmp_path)
    assert (code, tail.last_lines(5)) == (0, ["read-done"])


async def test_output_is_bounded(tmp_path: Path) -> None:
    """A chatty command keeps only the newest `limit` bytes, while all bytes are counted."""
    script = "import sys\nfor n in range(20000): sys.stdout.write(f'line {n:08d}\\n')\n"
    with trio.fail_after(30):
        code, tail = await run([sys.executable, "-c", script], tmp_path, limit=4096)
    assert code == 0
    assert tail.total_bytes == 20000 * 14
    assert len(tail.text()) == 4096
    assert tail.last_lines(1) == ["line 00019999"]
    assert "line 00000000" not in tail.text()


async def test_a_child_killed_by_a_signal_gives_a_negative_code(tmp_path: Path) -> None:
    """A leader killed by a signal reports minus that signal, as `subprocess` does."""
    with trio.fail_after(10):
        code, _ = await run(["sh", "-c", "kill -KILL $$"], tmp_path)
    assert code == -signal.SIGKILL


async def test_a_leader_killed_from_elsewhere_takes_its_group_with_it(tmp_path: Path, strays: list[int]) -> None:
    """When the leader dies of a signal, a grandchild still in its group is killed too."""
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; kill -KILL $$"
    with trio.fail_after(10):
        code, _ = await run(["sh", "-c", script], tmp_path)
        grandchild = await read_pid(pidfile)
        strays.append(grandchild)
        await wait_gone(grandchild)
    assert code == -signal.SIGKILL


async def test_cancellation_terminates_the_whole_group(tmp_path: Path, strays: list[int]) -> None:
    """Cancelled, the group gets SIGTERM: leader and grandchild end long before `kill_grace`, the code is kept."""
    pidfile = tmp_path / "grandchild.pid"
    record = ExitRecord()
    started = trio.current_time()
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: run_with_output(
                        Launch(("sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"), tmp_path, ENV, kill_grace=30),
                        tail=OutputTail(4096),
                        record=record,
                    )
                )
                grandchild = await read_pid(pidfile)
                strays.append(grandchild)
                started = trio.current_time()
                scope.cancel()
        elapsed = trio.current_time() - started
        await wait_gone(grandchild)
    assert scope.cancelled_caught
    assert record.signalled_group
    assert record.returncode == -signal.SIGTERM
    assert elapsed < 10


async def test_cancellation_kills_what_ignores_sigterm_after_the_grace(tmp_path: Path, strays: list[int]) -> None:
    """A group that ignores SIGTERM gets SIGKILL after `kill_grace`; no exception leaves while the leader lives."""
    pidfile = tmp_path / "grandchild.pid"
    record = ExitRecord()
    grace = 1.0
    script = f"trap '' TERM; sleep 300 & echo $! > {pidfile}; while :; do wait; done"
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: run_with_output(
                        Launch(("sh", "-c", script), tmp_path, ENV, kill_grace=grace),
                        tail=OutputTail(4096),
                        record=record,
                    )
                )
                grandchild = await read_pid(pidfile)
                strays.append(grandchild)
                started = trio.current_time()
                scope.cancel()
        elapsed = trio.current_time() - started
        # By the time the cancellation has left, the leader is dead: SIGKILL, not SIGTERM, ended it.
        assert record.returncode == -signal.SIGKILL
        await wait_gone(grandchild)
    assert record.signalled_group
    assert grace <= elapsed < grace + 8


async def test_cancellation_kills_a_marked_process_that_left_the_group(tmp_path: Path, strays: list[int]) -> None:
    """A process that started a session of its own but carries the run's marker variable is killed too."""
    pidfile = tmp_path / "escaped.pid"
    marker = ("TEST_RUN_MARKER", uuid.uuid4().hex)
    escape = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    open(sys.argv[1], 'w').write(f'{os.getpid()}\\n')\n"
        "    time.sleep(300)\n"
        "else:\n"
        "    time.sleep(300)\n"
    )
    record = ExitRecord()
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: run_with_output(
                        Launch(
                            (sys.executable, "-c", escape, str(pidfile)),
                            tmp_path,
                            {**ENV, marker[0]: marker[1]},
                            kill_grace=5,
                            marker=marker,
                        ),
                        tail=OutputTail(4096),
                        record=record,
                    )
                )
                escaped = await read_pid(pidfile)
                strays.append(escaped)
                assert os.getpgid(escaped) == escaped  # it really left the run's group
                scope.cancel()
        await wait_gone(escaped)
    assert record.returncode == -signal.SIGTERM


async def test_a_missing_executable_is_an_os_error(tmp_path: Path) -> None:
    """An executable that cannot be started raises `OSError` itself, not an exception group."""
    with trio.fail_after(10), pytest.raises(FileNotFoundError):
        await run([str(tmp_path / "no-such-program")], tmp_path)


async def test_the_side_reader_learns_when_the_process_exits(tmp_path: Path) -> None:
    """The second reader runs beside the process and gets an event that is set once it has exited."""
    seen: list[bool] = []

    async def side_reader(exited: trio.Event) -> None:
        seen.append(exited.is_set())
        await exited.wait()
        seen.append(exited.is_set())

    record = ExitRecord()
    with trio.fail_after(10):
        code = await run_with_output(
            Launch(("sh", "-c", "sleep 0.2"), tmp_path, ENV, kill_grace=1),
            tail=OutputTail(4096),
            record=record,
            side_reader=side_reader,
        )
    assert code == 0
    assert seen == [False, True]


async def test_a_straggler_holding_the_output_open_does_not_hold_the_run(tmp_path: Path, strays: list[int]) -> None:
    """A grandchild that keeps stdout open delays the result by at most `drain_seconds`."""
    pidfile = tmp_path / "straggler.pid"
    record = ExitRecord()
    with trio.fail_after(15):
        started = trio.current_time()
        code = await run_with_output(
            Launch(("sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo bye"), tmp_path, ENV, kill_grace=1),
            tail=OutputTail(4096),
            record=record,
            drain_seconds=0.5,
        )
        elapsed = trio.current_time() - started
    strays.append(await read_pid(pidfile))
    assert code == 0
    assert elapsed < 8
