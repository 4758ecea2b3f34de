"""Credentials per job, against real sshd servers: keys through a per-job agent, vault passwords, masking."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from ansible_worker.mqtt.link import open_mqtt_link
from ansible_worker.mqtt.options import LinkOptions
from testing.ports import free_port
from testing.sshd import SshHost, make_key, ssh_hosts
from tests.conftest import (
    Broker,
    make_settings,
    open_controller,
    worker_config,
    worker_process,
)
from tests.deployment import Deployment, lane
from tests.run.runs import open_runs

PASSPHRASE = "correct horse battery staple"
TOKEN = "tok-3f9a1c77e2b04d51"
VAULT_PASSWORD = "vault-pw-81d2c6aa"

PARALLEL = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Work a while on each host
      ansible.builtin.shell: "date +%s.%N > {{ marks }}/{{ inventory_hostname }}.start; sleep 1; date +%s.%N > {{ marks }}/{{ inventory_hostname }}.end"
    - name: See the job's own SSH connections
      ansible.builtin.shell: ls -A "$ANSIBLE_SSH_CONTROL_PATH_DIR"
      delegate_to: localhost
      run_once: true
      vars:
        ansible_connection: local
        ansible_python_interpreter: "{{ ansible_playbook_python }}"
      register: control
    - name: They are in the job's private ControlPath directory
      ansible.builtin.assert:
        that: control.stdout_lines | length >= 2
      run_once: true
"""

VAULTED = """\
- hosts: localhost
  connection: local
  gather_facts: false
  vars_files: [secret_vars.yml]
  tasks:
    - name: Read the vaulted value
      ansible.builtin.assert:
        that: secret_word == "swordfish"
"""

LEAKY = """\
- hosts: all
  gather_facts: false
  vars:
    token: "{{ lookup('env', 'API_TOKEN') }}"
  tasks:
    - name: Print it
      ansible.builtin.debug:
        var: token
    - name: Echo it
      ansible.builtin.command: echo "the token is {{ token }}"
    - name: Print the worker's own secret
      ansible.builtin.debug:
        msg: "{{ lookup('env', 'SHARED_SECRET') }}"
    - name: Fail with it
      ansible.builtin.fail:
        msg: "bad token {{ token }}"
"""


@pytest.fixture(autouse=True)
def no_agent_of_our_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own agent must not lend its keys to the jobs under test."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@asynccontextmanager
async def lab(
    tmp_path: Path, names: list[str], *, passphrase: str = ""
) -> AsyncIterator[tuple[list[SshHost], Path, Path]]:
    """sshd hosts that accept one fresh key; the hosts, the key file and a known_hosts file for them."""
    key = tmp_path / "keys" / "deploy"
    key.parent.mkdir()
    public = make_key(key, passphrase=passphrase)
    async with ssh_hosts(tmp_path / "hosts", names, [public]) as hosts:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("".join(f"{host.known_hosts_line}\n" for host in hosts))
        yield hosts, key, known_hosts


def inventory(playbook_dir: Path, hosts: list[SshHost], *extra: str) -> str:
    (playbook_dir / "ssh.ini").write_text("\n".join([*(host.inventory_line() for host in hosts), *extra]) + "\n")
    return "ssh.ini"


def left_behind(runs: Path) -> list[str]:
    """Processes of runs under `runs` still alive (the agent, SSH masters...): they carry the run's marker."""
    marked = f"ANSIBLE_WORKER_EVENT_FIFO={runs}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marked in (entry / "environ").read_bytes():
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


@lane
async def test_a_key_with_a_passphrase_runs_hosts_in_parallel_and_leaves_nothing(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    (playbook_dir / "parallel.yml").write_text(PARALLEL)
    async with lab(tmp_path, ["web1", "web2"], passphrase=PASSPHRASE) as (hosts, key, known_hosts):
        credentials = {"deploy": {"type": "ssh", "private_key_file": str(key), "passphrase": PASSPHRASE}}
        settings = make_settings(broker.port, playbook_dir, group, credentials=credentials, known_hosts=known_hosts)
        key_bytes = key.read_bytes()
        runs = playbook_dir.parent / "runs"
        seen_files: set[Path] = set()
        leaked: list[Path] = []

        async def watch_run_directory(done: trio.Event) -> None:
            # Every file the run ever holds, read while it runs: none may hold the key.
            while not done.is_set():
                for path in runs.rglob("*"):
                    if path.is_file() and path not in seen_files:
                        seen_files.add(path)
                        try:
                            if key_bytes.strip() in path.read_bytes() or b"PRIVATE KEY" in path.read_bytes():
                                leaked.append(path)
                        except OSError:
                            pass
                await trio.sleep(0.02)

        async with deployment.running(settings) as worker, open_controller(broker, group) as controller:
            job = {
                "task_id": "ssh-1",
                "playbook": "parallel.yml",
                "inventory": inventory(playbook_dir, hosts),
                "credentials": ["deploy"],
                "extra_vars": {"marks": str(marks)},
            }
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_run_directory, done)
                await controller.submit(job)
                running = await controller.wait_for("ssh-1", {"running"})
                assert running["state"] == "running"
                final = await controller.wait_terminal("ssh-1", within=90)
                done.set()
            warm_and_cold = await worker.starts(jobs_done=1)
    assert final["state"] == "success", final["error_message"]
    assert final["tasks_changed"] == 3
    # Credentials do not cost the warm start: what they set is given to the fork, not the parent.
    assert warm_and_cold == (1, 0)
    starts = {name: float((marks / f"{name}.start").read_text()) for name in ("web1", "web2")}
    ends = {name: float((marks / f"{name}.end").read_text()) for name in ("web1", "web2")}
    # Forks: each host started before the other ended.
    assert starts["web1"] < ends["web2"]
    assert starts["web2"] < ends["web1"]
    assert seen_files, "the watcher saw the run directory"
    assert leaked == []
    assert left_behind(runs) == []
    assert list(runs.iterdir()) == []


async def test_without_the_credential_the_host_refuses_and_a_closed_port_is_unreachable(
    playbook_dir: Path, tmp_path: Path
) -> None:
    (playbook_dir / "ping.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n"
    )
    async with lab(tmp_path, ["web1"]) as (hosts, key, known_hosts):
        credentials = {"deploy": {"type": "ssh", "private_key_file": str(key)}}
        closed = f"gone ansible_host=127.0.0.1 ansible_port={free_port()} ansible_user=root"
        async with open_runs(playbook_dir, credentials=credentials, known_hosts=known_hosts) as runs:
            without = await runs.submit(
                {"task_id": "no-key", "playbook": "ping.yml", "inventory": inventory(playbook_dir, hosts)}
            )
            unreachable = await runs.submit(
                {
                    "task_id": "closed",
                    "playbook": "ping.yml",
                    "credentials": ["deploy"],
                    "inventory": inventory(playbook_dir, hosts, closed),
                }
            )
    assert without["state"] == "failed"
    assert without["tasks_unreachable"] == 1
    assert "Permission denied" in without["error_message"]
    assert unreachable["state"] == "failed"
    assert (unreachable["tasks_ok"], unreachable["tasks_unreachable"]) == (1, 1)
    assert "gone" in unreachable["error_message"]
    assert "Connection refused" in unreachable["error_message"]


async def test_an_unknown_host_key_is_refused_with_strict_checking(playbook_dir: Path, tmp_path: Path) -> None:
    (playbook_dir / "ping.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n"
    )
    async with lab(tmp_path, ["web1"]) as (hosts, key, _):
        other = tmp_path / "other_known_hosts"
        other.write_text("")
        credentials = {"deploy": {"type": "ssh", "private_key_file": str(key)}}
        async with open_runs(playbook_dir, credentials=credentials, known_hosts=other) as runs:
            final = await runs.submit(
                {
                    "task_id": "strict",
                    "playbook": "ping.yml",
                    "credentials": ["deploy"],
                    "inventory": inventory(playbook_dir, hosts),
                }
            )
    assert final["state"] == "failed"
    assert final["tasks_unreachable"] == 1
    assert "Host key verification failed" in final["error_message"]
    assert other.read_text() == "", "an unknown host key is never learnt"


@lane
async def test_a_vaulted_vars_file_needs_the_vault_credential(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    password_file = tmp_path / "vault-pass"
    password_file.write_text(VAULT_PASSWORD + "\n")
    vars_file = playbook_dir / "secret_vars.yml"
    vars_file.write_text("secret_word: swordfish\n")
    vault = str(Path(sys.executable).parent / "ansible-vault")
    await trio.run_process(
        [vault, "encrypt", "--vault-password-file", str(password_file), str(vars_file)], capture_stdout=True
    )
    assert b"swordfish" not in vars_file.read_bytes()
    # ansible-vault leaves it 0600; a checkout of it is as readable as the other playbooks.
    vars_file.chmod(0o644)
    (playbook_dir / "vaulted.yml").write_text(VAULTED)
    credentials = {"vault": {"type": "vault", "password_file": str(password_file)}}
    settings = make_settings(broker.port, playbook_dir, group, credentials=credentials)
    async with deployment.running(settings), open_controller(broker, group) as controller:
        job = {"playbook": "vaulted.yml", "inventory": "localhost,"}
        await controller.submit({"task_id": "with-vault", **job, "credentials": ["vault"]})
        with_vault = await controller.wait_terminal("with-vault")
        await controller.submit({"task_id": "without-vault", **job})
        without = await controller.wait_terminal("without-vault")
    assert with_vault["state"] == "success", with_vault["error_message"]
    assert without["state"] == "failed"
    assert "vault" in without["error_message"].lower()
    assert VAULT_PASSWORD not in json.dumps(with_vault) + json.dumps(without)


async def test_unknown_and_forbidden_credentials_are_refused_by_name(playbook_dir: Path) -> None:
    credentials = {"prod": {"type": "env", "variables": {"API_TOKEN": TOKEN}, "allowed_playbooks": ["deploy/*.yml"]}}
    async with open_runs(playbook_dir, credentials=credentials) as runs:
        unknown = await runs.submit(
            {"task_id": "unknown", "playbook": "quick.yml", "inventory": "localhost,", "credentials": ["nope"]}
        )
        forbidden = await runs.submit(
            {"task_id": "forbidden", "playbook": "quick.yml", "inventory": "localhost,", "credentials": ["prod"]}
        )
    assert unknown["state"] == "failed"
    assert unknown["error_message"] == "credential 'nope' is not defined on this worker"
    assert forbidden["error_message"] == "credential 'prod' may not be used by playbook 'quick.yml'"


async def test_secrets_are_masked_in_every_message_and_log_line(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    (playbook_dir / "leaky.yml").write_text(LEAKY)
    config = worker_config(
        tmp_path / "w.json",
        broker,
        playbook_dir,
        group,
        worker_id="masker",
        credentials={"api": {"type": "env", "variables": {"API_TOKEN": TOKEN}}},
        environment={"SHARED_SECRET": "worker-wide-secret-9"},
    )
    document = json.loads(config.read_text())
    document["log_level"] = "DEBUG"
    config.write_text(json.dumps(document))
    seen: list[bytes] = []
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="spy")
    async with open_mqtt_link(options) as spy, trio.open_nursery() as nursery:
        await spy.subscribe("#", 1)

        async def record() -> None:
            async for message in spy.messages():
                seen.append(message.topic.encode() + b" " + message.payload)

        nursery.start_soon(record)
        async with worker_process("run", "-c", str(config)) as worker, open_controller(broker, group) as controller:
            await worker.wait_for_line("connected to broker")
            await controller.submit(
                {
                    "task_id": "leak",
                    "playbook": "leaky.yml",
                    "inventory": "one_host.ini",
                    "credentials": ["api"],
                    "verbosity": 3,
                }
            )
            final = await controller.wait_terminal("leak", within=60)
            await worker.stop()
        nursery.cancel_scope.cancel()
    assert final["state"] == "failed"
    assert "bad token ********" in final["error_message"]
    everything = b"\n".join(seen)
    assert b"********" in everything
    for secret in (TOKEN, "worker-wide-secret-9"):
        assert secret.encode() not in everything
        assert not [line for line in worker.lines if secret in line]
    assert any("********" in line for line in worker.lines)


async def test_a_wrong_passphrase_fails_at_once_and_says_so(playbook_dir: Path, tmp_path: Path) -> None:
    (playbook_dir / "ping.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n"
    )
    async with lab(tmp_path, ["web1"], passphrase=PASSPHRASE) as (hosts, key, known_hosts):
        credentials = {"deploy": {"type": "ssh", "private_key_file": str(key), "passphrase": "not the passphrase"}}
        async with open_runs(playbook_dir, credentials=credentials, known_hosts=known_hosts) as runs:
            final = await runs.submit(
                {
                    "task_id": "bad-pass",
                    "playbook": "ping.yml",
                    "inventory": inventory(playbook_dir, hosts),
                    "credentials": ["deploy"],
                }
            )
    assert final["state"] == "failed"
    assert final["error_message"] == "cannot load the SSH key deploy: wrong or missing passphrase"
    # One answer, not ssh-add's retries until a timeout.
    assert final["duration_seconds"] < 5
    assert left_behind(playbook_dir.parent / "runs") == []


async def test_a_restricted_credential_follows_the_file_not_the_name(playbook_dir: Path) -> None:
    (playbook_dir / "deploy").mkdir()
    (playbook_dir / "deploy" / "site.yml").write_text((playbook_dir / "quick.yml").read_text())
    (playbook_dir / "evil.yml").write_text((playbook_dir / "quick.yml").read_text())
    (playbook_dir / "deploy" / "link.yml").symlink_to("../evil.yml")
    credentials = {"prod": {"type": "env", "variables": {"API_TOKEN": TOKEN}, "allowed_playbooks": ["deploy/*.yml"]}}
    job = {"inventory": "one_host.ini", "credentials": ["prod"]}
    async with open_runs(playbook_dir, credentials=credentials) as runs:
        results = {}
        for task_id, playbook in [
            ("ok", "deploy/site.yml"),
            ("dots", "deploy/../evil.yml"),
            ("link", "deploy/link.yml"),
        ]:
            results[task_id] = await runs.submit({"task_id": task_id, "playbook": playbook, **job})
    assert results["ok"]["state"] == "success", results["ok"]["error_message"]
    assert results["dots"]["state"] == "failed"
    assert results["dots"]["error_message"] == "playbook must not contain '..': 'deploy/../evil.yml'"
    assert results["link"]["state"] == "failed"
    assert results["link"]["error_message"] == "credential 'prod' may not be used by playbook 'evil.yml'"
