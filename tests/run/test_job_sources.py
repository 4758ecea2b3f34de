"""Jobs from git: commit snapshots of the playbook directory, projects at a revision, and their errors.

Real repositories made here, fetched over a file:// URL and from a `git daemon` on a free
loopback port. What a job saw is read from inside the running playbook (`set_stats`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from testing.ports import free_port
from tests.conftest import (
    PLAYBOOKS,
    Broker,
    Controller,
    make_settings,
    open_controller,
    processes_mentioning,
    running_worker,
)
from tests.deployment import Deployment, lane
from tests.run.runs import open_runs

# Reads version.txt, waits for the go-ahead file when asked to, then reads it again.
SHOW = """\
- name: Show
  hosts: host1
  gather_facts: false
  tasks:
    - name: Before
      ansible.builtin.set_stats:
        data:
          before: "{{ lookup('ansible.builtin.file', 'version.txt') }}"
    - name: Wait for the go-ahead
      ansible.builtin.wait_for:
        path: "{{ go_file }}"
        timeout: 60
      when: go_file is defined
    - name: After
      ansible.builtin.set_stats:
        data:
          after: "{{ lookup('ansible.builtin.file', 'version.txt') }}"
"""


def git(directory: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


class Origin:
    """A bare repository `origin.git` and a working clone `seed` that commits and pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "origin.git"
        self.seed = root / "seed"
        git(root, "init", "--quiet", "--bare", "-b", "main", str(self.bare))
        git(root, "clone", "--quiet", str(self.bare), str(self.seed))
        shutil.copy(PLAYBOOKS / "one_host.ini", self.seed / "one_host.ini")
        (self.seed / "show.yml").write_text(SHOW)

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, version: str, *, tag: str | None = None, files: dict[str, str] | None = None) -> str:
        (self.seed / "version.txt").write_text(version)
        for name, text in (files or {}).items():
            (self.seed / name).write_text(text)
        git(self.seed, "add", ".")
        git(self.seed, "commit", "--quiet", "-m", f"version {version}")
        if tag is not None:
            git(self.seed, "tag", tag)
        git(self.seed, "push", "--quiet", "--tags", "origin", "HEAD:main")
        return git(self.seed, "rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path)


JOB = {"playbook": "show.yml", "inventory": "one_host.ini"}


async def wait_for_task(controller: Controller, task_id: str, task: str, within: float = 60) -> None:
    """Until a status of `task_id` says it is at `task`."""
    with trio.fail_after(within):
        while not any(s.get("current_task") == task for s in controller.statuses.get(task_id, [])):
            await controller._changed.wait()


def trees(settings_root: Path) -> list[str]:
    directory = settings_root / "sources" / "trees"
    return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []


# Which of two files the running playbook sees, from inside the run (its working directory is its tree).
FILES = """\
- name: Files
  hosts: host1
  gather_facts: false
  tasks:
    - name: Look
      ansible.builtin.set_stats:
        data:
          files: "{{ ['only-one.txt', 'only-two.txt'] | select('file') | list }}"
"""


async def test_two_revisions_at_once_each_see_their_own_files(origin: Origin, tmp_path: Path) -> None:
    first = origin.commit("one", tag="v1", files={"only-one.txt": "1", "files.yml": FILES})
    git(origin.seed, "rm", "--quiet", "only-one.txt")
    second = origin.commit("two", files={"only-two.txt": "2"})
    go = tmp_path / "go"
    projects = {"site": {"url": origin.url, "allow_revision": True}}
    state = tmp_path / "state"
    async with open_runs(tmp_path / "seed", projects=projects, state_dir=state) as runs:
        jobs = {}
        for task_id, revision in (("at-v1", "v1"), ("at-main", "main")):
            job = {
                "task_id": task_id,
                **JOB,
                "project": "site",
                "revision": revision,
                "extra_vars": {"go_file": str(go)},
            }
            jobs[task_id] = runs.start(job)
        # Both are inside their runs at once before either may go on.
        for task_id in jobs:
            await runs.wait_for(task_id, lambda status: status.get("current_task") == "Wait for the go-ahead")
        assert sorted(trees(state)) == sorted([f"project-site-{first}", f"project-site-{second}"])
        go.write_text("go")
        old = await runs.wait_terminal(jobs["at-v1"])
        new = await runs.wait_terminal(jobs["at-main"])
    assert old["state"] == "success", old["error_message"]
    assert new["state"] == "success", new["error_message"]
    assert old["output"] == {"before": "one", "after": "one"}
    assert new["output"] == {"before": "two", "after": "two"}
    assert (old["project"], old["revision"]) == ("site", first)
    assert (new["project"], new["revision"]) == ("site", second)
    seen = {}
    async with open_runs(tmp_path / "seed", projects=projects, state_dir=state) as runs:
        for task_id, revision in (("files-v1", "v1"), ("files-main", "main")):
            seen[task_id] = await runs.submit(
                {"task_id": task_id, **JOB, "playbook": "files.yml", "project": "site", "revision": revision}
            )
    assert seen["files-v1"]["output"] == {"files": ["only-one.txt"]}, seen["files-v1"]["error_message"]
    assert seen["files-main"]["output"] == {"files": ["only-two.txt"]}, seen["files-main"]["error_message"]


@lane
async def test_git_pull_while_a_job_runs_leaves_its_files_alone(
    broker: Broker, origin: Origin, git_daemon: str, tmp_path: Path, deployment: Deployment
) -> None:
    before = origin.commit("one")
    checkout = tmp_path / "checkout"
    # From a server, as a deployment's checkout is: git fetches from no local repository of another user.
    git(tmp_path, "clone", "--quiet", "-b", "main", git_daemon, str(checkout))
    # Jobs pull into the checkout: it is the worker's, as deploy/kubernetes clones it.
    deployment.hand_over(checkout)
    go = tmp_path / "go"
    settings = make_settings(broker.port, checkout, "g-pull", concurrency=2, state_dir=tmp_path / "state")
    async with open_controller(broker, "g-pull") as controller, deployment.running(settings):
        await controller.submit({"task_id": "running", **JOB, "extra_vars": {"go_file": str(go)}})
        await wait_for_task(controller, "running", "Wait for the go-ahead")
        after = origin.commit("two")
        # On the same host as the running job: with host locks (on as deployed) it says it may run beside it.
        await controller.submit({"task_id": "puller", **JOB, "git_pull": True, "locks": []})
        pulled = await controller.wait_terminal("puller")
        # The live checkout moved on; the running job's tree did not.
        assert (checkout / "version.txt").read_text() == "two"
        go.write_text("go")
        kept = await controller.wait_terminal("running")
    assert pulled["state"] == "success", pulled["error_message"]
    assert pulled["output"] == {"before": "two", "after": "two"}
    assert pulled["revision"] == after
    assert kept["state"] == "success", kept["error_message"]
    assert kept["output"] == {"before": "one", "after": "one"}
    assert kept["revision"] == before
    assert kept["project"] is None


@pytest.fixture
def git_daemon(origin: Origin) -> Iterator[str]:
    """`git daemon` serving the origin's directory on a free loopback port; yields the URL of origin.git."""
    port = free_port()
    base = origin.bare.parent
    process = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}", "--listen=127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("git daemon exited") from None
                subprocess.run(["sleep", "0.02"], check=True)
        else:
            raise RuntimeError("git daemon did not listen within 10s")
        yield f"git://127.0.0.1:{port}/origin.git"
    finally:
        process.terminate()
        process.wait(timeout=10)


@lane
async def test_tag_and_full_commit_id_over_git_daemon(
    broker: Broker, origin: Origin, git_daemon: str, tmp_path: Path, deployment: Deployment
) -> None:
    first = origin.commit("one", tag="v1")
    second = origin.commit("two")
    projects = {"net": {"url": git_daemon, "allow_revision": True, "update_interval": 3600}}
    settings = make_settings(broker.port, tmp_path / "seed", "g-net", projects=projects, state_dir=tmp_path / "state")
    async with open_controller(broker, "g-net") as controller, deployment.running(settings):
        jobs = {"by-tag": "v1", "by-id": first, "by-branch": None}
        for task_id, revision in jobs.items():
            await controller.submit({"task_id": task_id, **JOB, "project": "net", "revision": revision})
        finals = {task_id: await controller.wait_terminal(task_id) for task_id in jobs}
    for final in finals.values():
        assert final["state"] == "success", final["error_message"]
    assert finals["by-tag"]["revision"] == first
    assert finals["by-id"]["revision"] == first
    assert finals["by-branch"]["revision"] == second
    assert finals["by-tag"]["output"]["after"] == "one"
    assert finals["by-branch"]["output"]["after"] == "two"


def hanging_listener() -> tuple[socket.socket, int]:
    """A socket that accepts connections (in the kernel's backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server, int(server.getsockname()[1])


async def test_each_source_error_has_its_documented_message(broker: Broker, origin: Origin, tmp_path: Path) -> None:
    origin.commit("one")
    silent, port = hanging_listener()
    projects: dict[str, Any] = {
        "site": {"url": origin.url},
        "pinnable": {"url": origin.url, "allow_revision": True},
        "gone": {"url": (tmp_path / "no-such-repository").as_uri()},
        "slow": {"url": f"git://127.0.0.1:{port}/x.git", "fetch_timeout": 1},
    }
    state = tmp_path / "state"
    settings = make_settings(broker.port, tmp_path / "seed", "g-err", projects=projects, state_dir=state)
    jobs = {
        "unknown": ({"project": "nope"}, "unknown project 'nope'"),
        "not-allowed": ({"project": "site", "revision": "main"}, "revision pinning is not allowed for project 'site'"),
        "not-found": ({"project": "pinnable", "revision": "v9"}, "revision not found in project 'pinnable': 'v9'"),
        "fetch-failed": ({"project": "gone"}, "fetch of project 'gone' failed (exit 128): "),
        "fetch-slow": ({"project": "slow"}, "fetch of project 'slow' timed out after 1s"),
        "dir-pin": ({"revision": "main"}, "revision pinning is not allowed for the playbook directory"),
        "bad-revision": (
            {"project": "pinnable", "revision": "main..v1"},
            "invalid task: revision: must name one commit",
        ),
    }
    try:
        async with open_controller(broker, "g-err") as controller, running_worker(settings):
            for task_id, (fields, _) in jobs.items():
                await controller.submit({"task_id": task_id, **JOB, **fields})
            finals = {task_id: await controller.wait_terminal(task_id) for task_id in jobs}
    finally:
        silent.close()
    for task_id, (_, message) in jobs.items():
        assert finals[task_id]["state"] == "failed", task_id
        assert finals[task_id]["error_message"].startswith(message), (task_id, finals[task_id]["error_message"])
    # A failed fetch leaves no tree behind.
    assert trees(state) == []


async def test_cancel_during_a_fetch_ends_git_and_leaves_no_tree(origin: Origin, tmp_path: Path) -> None:
    origin.commit("one")
    silent, port = hanging_listener()
    projects = {"slow": {"url": f"git://127.0.0.1:{port}/hangs.git", "fetch_timeout": 300}}
    state = tmp_path / "state"
    try:
        async with open_runs(tmp_path / "seed", projects=projects, state_dir=state) as runs:
            job = runs.start({"task_id": "fetching", **JOB, "project": "slow"})
            with trio.fail_after(30):
                while not processes_mentioning(f"127.0.0.1:{port}/hangs.git"):  # noqa: ASYNC110 - another process
                    await trio.sleep(0.05)
            runs.cancel(job, reason="wrong project")
            final = await runs.wait_terminal(job)
            assert processes_mentioning(f"127.0.0.1:{port}/hangs.git") == []
    finally:
        silent.close()
    assert final["state"] == "cancelled"
    assert final["error_message"].endswith(": wrong project")
    assert trees(state) == []
