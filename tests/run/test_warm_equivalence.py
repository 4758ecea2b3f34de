"""A warm job is a cold one: what it prints and reports, what it leaves on disk, and the configuration it runs with.

Each case builds a playbook tree, runs one job on a worker with warm starts and the same job
on a worker without, each time in a freshly built tree with a fresh HOME and temporary
directory, and compares everything a user can see. It does so in every deployment
(`tests/deployment.py`): the tree is the operator's and read-only, HOME and the temporary
directory are the worker's own, and `ansible-config` runs as the worker's user. A callback plugin of these tests
(`probe_plugins/warm_probe.py`) writes down Ansible's settings and the process as each run
sees them from inside; `ansible-config dump --only-changed`, run in the tree, says what the
settings should be.

The trees and the worker's settings come from `tree_case`, `equivalence_places` (which takes
the deployment's `seal` and `give`) and `equivalence_settings`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import Broker, client_for, make_settings, open_controller
from tests.deployment import Deployment, lane
from tests.run.warm_cases import CASES, Case, build_tree

PROBE_PLUGINS = Path(__file__).parent / "probe_plugins"
# The worker keeps an operator's own callback path (after its own): the probe comes that way.
OPERATOR_ENVIRONMENT = {"ANSIBLE_CALLBACK_PLUGINS": str(PROBE_PLUGINS)}
# Durations and dates, which differ between any two runs.
TIMINGS = re.compile(r"\d+\.\d+s|\d{4}-\d\d-\d\d[ T][\d:.]+|\(\d+:\d\d:\d\d\.\d+\)")
# Names with a process id or a random part in them: Ansible's temporary directories, the run directory.
PER_RUN = re.compile(r"ansible-local-\d+[a-z0-9_]+|ansible-tmp-[\d.-]+|(ansible-worker-[\w.-]+?-)[a-z0-9_]{8}\b")
STATUS_FIELDS = (
    "state",
    "return_code",
    "error_message",
    "output",
    "output_per_host",
    "tasks_total",
    "tasks_ok",
    "tasks_changed",
    "tasks_failed",
    "tasks_skipped",
    "tasks_unreachable",
    "tasks_rescued",
    "tasks_ignored",
)


@pytest.fixture(params=sorted(CASES))
def tree_case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _nothing(path: Path) -> object:
    return None


@dataclass
class Places:
    """Where a run may leave files: the tree, HOME, the temporary directory, the run directories.

    `seal` is applied to each tree once built (`unseal` before it is built again): a suite
    that runs the worker as another user makes it root's and read-only there. `give` makes
    HOME, the temporary directory and the probe's directory the worker's. `scratch`, if
    any, is where the deployment's own environment points Ansible (the image's
    `ANSIBLE_HOME`): made anew for each run and compared too.
    """

    tree: Path
    home: Path
    tmp: Path
    runs: Path
    probes: Path
    seal: Callable[[Path], object] = _nothing
    unseal: Callable[[Path], object] = _nothing
    give: Callable[[Path], object] = _nothing
    scratch: Path | None = None

    def reset(self, source: Path, case: Case) -> None:
        self.unseal(self.tree)
        build_tree(self.tree, source, case)
        self.seal(self.tree)
        for directory in (self.home, self.tmp, self.probes, self.scratch):
            if directory is None:
                continue
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir()
            self.give(directory)
        self.runs.mkdir(exist_ok=True)

    def snapshot(self) -> dict[str, dict[str, str]]:
        found = {name: files_under(getattr(self, name)) for name in ("tree", "home", "tmp", "runs")}
        if self.scratch is not None:
            found["scratch"] = files_under(self.scratch)
        return found


@pytest.fixture
def equivalence_places(tmp_path: Path, deployment: Deployment) -> Places:
    base = tmp_path / "eq"
    base.mkdir()
    return Places(
        base / "tree",
        base / "home",
        base / "tmp",
        base / "runs",
        base / "probes",
        seal=deployment.seal,
        unseal=deployment.unseal,
        give=deployment.give,
        scratch=deployment.scratch,
    )


def files_under(root: Path) -> dict[str, str]:
    """Every entry under `root`: its kind, mode and content digest, by its path with per-run names made general."""
    found: dict[str, str] = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        relative = PER_RUN.sub(r"\1*", str(path.relative_to(root)))
        info = path.lstat()
        mode = oct(stat.S_IMODE(info.st_mode))
        if stat.S_ISLNK(info.st_mode):
            found[relative] = f"link {mode} -> {os.readlink(path)}"
        elif stat.S_ISDIR(info.st_mode):
            found[relative] = f"dir {mode}"
        else:
            found[relative] = f"file {mode} {hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    return found


def changes(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """What a run created, changed or removed, place by place."""
    result: dict[str, dict[str, Any]] = {}
    for place in before:
        old, new = before[place], after[place]
        result[place] = {
            path: (old.get(path), new.get(path))
            for path in sorted(set(old) | set(new))
            if old.get(path) != new.get(path)
        }
    return result


@dataclass
class Seen:
    """What one run showed: its status, output, events, the files it touched, and its probe."""

    status: dict[str, Any]
    output: list[str]
    events: list[tuple[Any, ...]]
    during: dict[str, dict[str, Any]]
    after: dict[str, dict[str, Any]]
    probes: list[dict[str, Any]]
    warm_starts: int


def equivalence_settings(places: Places, *, warm: bool, **worker: Any) -> dict[str, Any]:
    """A worker's settings for one run: HOME, TMPDIR and the probe's variables come through `worker.environment`."""
    environment = {
        "HOME": str(places.home),
        "TMPDIR": str(places.tmp),
        "WARM_PROBE_DIR": str(places.probes),
        "ANSIBLE_CALLBACKS_ENABLED": "warm_probe",
        **worker.pop("environment", {}),
    }
    return {"warm_start": warm, "environment": environment, "run_directory": places.runs, **worker}


def normalised(text: str) -> str:
    return PER_RUN.sub(r"\1*", TIMINGS.sub("T", text))


async def run_case(
    broker: Broker,
    places: Places,
    source: Path,
    case: Case,
    group: str,
    deployment: Deployment,
    *,
    warm: bool,
    task_id: str = "same-job",
) -> Seen:
    places.reset(source, case)
    before = places.snapshot()
    values = equivalence_settings(places, warm=warm, **dict(case.worker))
    settings = make_settings(broker.port, places.tree, group, **values)
    async with (
        deployment.running(settings, env=OPERATOR_ENVIRONMENT) as worker,
        open_controller(broker, group) as controller,
    ):
        # One fork: with more, hosts finish in any order, in a cold run as in a warm one.
        await controller.submit({"task_id": task_id, "forks": 1, **case.job})
        status = await controller.wait_terminal(task_id, within=120)
        during = changes(before, places.snapshot())
        warm_starts, _ = await worker.starts(jobs_done=1)
        async with client_for(broker, group) as client:
            record = await client.record(task_id)
    after = changes(before, places.snapshot())
    assert record is not None
    output = [normalised(line).rstrip() for line in record["output"].splitlines()]
    events = [
        (event.get("event"), event.get("host"), event.get("task"), event.get("status"), event.get("changed"))
        for event in record["events"]
    ]
    probes = [json.loads(path.read_text()) for path in sorted(places.probes.glob("*.json"))]
    return Seen(status, output, events, during, after, probes, warm_starts)


def comparable_process(probe: dict[str, Any]) -> dict[str, Any]:
    """The probe's view of the process, with what each run has of its own made general."""
    return dict(json.loads(normalised(json.dumps(probe["process"], sort_keys=True))))


def settings_seen(probe: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(normalised(json.dumps(probe["settings"], sort_keys=True))))


# The environment the worker gives a job, as the worker's own package computes it on the worker's Python.
JOB_ENVIRONMENT = """
import json, os, sys
from pathlib import Path
from ansible_worker.run.argv import ansible_environment, child_environment
extra, fifo = json.loads(sys.argv[1]), Path(sys.argv[2])
print(json.dumps(ansible_environment(child_environment(os.environ, extra=extra), fifo)))
"""


async def config_dump(
    places: Places, worker_environment: dict[str, str], deployment: Deployment
) -> list[dict[str, Any]]:
    """`ansible-config dump --only-changed` in the tree, as the worker's user, with the environment it gives its jobs."""
    fifo = places.runs / "probe-events.fifo"
    computed = [deployment.executable("python"), "-I", "-c", JOB_ENVIRONMENT, json.dumps(worker_environment), str(fifo)]
    with trio.fail_after(60):
        found = await deployment.run(computed, cwd=places.tree, env=deployment.environment(OPERATOR_ENVIRONMENT))
    assert found.returncode == 0, found.stderr.decode()
    env = json.loads(found.stdout)
    command = [deployment.executable("ansible-config"), "dump", "--only-changed", "--format", "json"]
    with trio.fail_after(60):
        result = await deployment.run(command, cwd=places.tree, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return [entry for entry in json.loads(result.stdout) if "name" in entry]


@lane
async def test_a_warm_job_is_what_a_cold_one_is(
    broker: Broker, playbook_dir: Path, group: str, tree_case: str, equivalence_places: Places, deployment: Deployment
) -> None:
    case = CASES[tree_case]
    places = equivalence_places
    warm = await run_case(broker, places, playbook_dir, case, group + "w", deployment, warm=True)
    # The configuration the warm run had, against what Ansible's own tool says in the same tree.
    environment = equivalence_settings(places, warm=True, **dict(case.worker))["environment"]
    dumped = await config_dump(places, environment, deployment)
    cold = await run_case(broker, places, playbook_dir, case, group + "c", deployment, warm=False)

    assert warm.warm_starts == 1, "the warm worker must have started the job warm"
    assert cold.warm_starts == 0
    assert {key: warm.status[key] for key in STATUS_FIELDS} == {key: cold.status[key] for key in STATUS_FIELDS}
    assert warm.output == cold.output
    assert warm.events == cold.events
    assert warm.during == cold.during
    assert warm.after == cold.after
    assert len(warm.probes) == len(cold.probes) == 1
    assert settings_seen(warm.probes[0]) == settings_seen(cold.probes[0])
    assert comparable_process(warm.probes[0]) == comparable_process(cold.probes[0])
    assert warm.probes[0]["config_file"] == cold.probes[0]["config_file"]
    for entry in dumped:
        if entry["name"] == "CONFIG_FILE":
            assert warm.probes[0]["config_file"] == entry["value"]
            continue
        expected = normalised(json.dumps(entry["value"], default=repr, sort_keys=True))
        seen = normalised(json.dumps(warm.probes[0]["settings"][entry["name"]], sort_keys=True))
        assert seen == expected, entry
    if case.expect is not None:
        case.expect(warm.status, "\n".join(warm.output))
    assert warm.status["state"] in ("success", "failed")


async def module_states(
    broker: Broker, places: Places, source: Path, group: str, deployment: Deployment, *, warm: bool
) -> list[Any]:
    """The global state of every module, as two jobs of one worker saw it when their playbooks started."""
    places.reset(source, CASES["plain"])
    # One hash seed for every process: the seed a warm parent draws is shared by its jobs (documented).
    worker = {"environment": {"WARM_PROBE_DEEP": "1", "PYTHONHASHSEED": "0"}}
    settings = make_settings(broker.port, places.tree, group, **equivalence_settings(places, warm=warm, **worker))
    async with (
        deployment.running(settings, env=OPERATOR_ENVIRONMENT) as running,
        open_controller(broker, group) as controller,
    ):
        for index in range(2):
            await controller.submit(
                {"task_id": f"state-{index}", "playbook": "quick.yml", "inventory": "inventory.ini"}
            )
            assert (await controller.wait_terminal(f"state-{index}", within=120))["state"] == "success"
        assert (await running.starts(jobs_done=2))[0] == (2 if warm else 0)
    probes = sorted(
        (json.loads(path.read_text()) for path in places.probes.glob("*.json")), key=lambda probe: probe["pid"]
    )
    assert len(probes) == 2
    return [json.loads(normalised(json.dumps(probe["modules"]))) for probe in probes]


def differences(first: Any, second: Any, path: str = "") -> list[str]:
    """Where two descriptions differ, as paths into them (for a readable failure)."""
    if isinstance(first, dict) and isinstance(second, dict):
        return [
            found
            for key in sorted(set(first) | set(second))
            for found in differences(first.get(key), second.get(key), f"{path}/{key}")
        ]
    if isinstance(first, list) and isinstance(second, list) and len(first) == len(second):
        return [
            found
            for index, pair in enumerate(zip(first, second, strict=True))
            for found in differences(*pair, f"{path}[{index}]")
        ]
    return [] if first == second else [f"{path}: {str(first)[:200]} != {str(second)[:200]}"]


@lane
async def test_warm_jobs_have_the_module_state_of_cold_ones_and_renew_what_is_per_process(
    broker: Broker, playbook_dir: Path, group: str, equivalence_places: Places, deployment: Deployment
) -> None:
    warm = await module_states(broker, equivalence_places, playbook_dir, group + "w", deployment, warm=True)
    cold = await module_states(broker, equivalence_places, playbook_dir, group + "c", deployment, warm=False)
    names = set(cold[0]) | set(cold[1]) | set(warm[0]) | set(warm[1])
    per_process = {name for name in names if cold[0].get(name) != cold[1].get(name)}
    # Drawn or stamped by each process (a random value, a time, a temporary directory): new in each warm job too.
    not_renewed = sorted(name for name in per_process if warm[0].get(name) == warm[1].get(name))
    # The same in every cold run: the same in a warm one.
    different = sorted(name for name in names - per_process if warm[0].get(name) != cold[0].get(name))
    assert not_renewed == [], {name: (warm[0].get(name), cold[0].get(name), cold[1].get(name)) for name in not_renewed}
    assert different == [], {name: differences(warm[0].get(name), cold[0].get(name)) for name in different}
