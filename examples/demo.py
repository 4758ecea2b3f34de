"""Show ansible-worker end to end: a local broker, one worker, jobs and their live status.

Starts Mosquitto on a free loopback port, starts `ansible-worker run` with a config that
points at `examples/playbooks`, publishes a job for `hello.yml` as any MQTT controller
would and prints each status the worker publishes on the retained status topic until the
terminal one. Then it runs the same playbook with the bundled controller command,
`ansible-worker submit --wait`, lists the templates of `examples/playbooks/templates.yml`,
launches one with a survey answer, lists the workers, and stops everything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.topics import Topics

HERE = Path(__file__).resolve().parent
GROUP = "demo"
TERMINAL = {"success", "failed", "cancelled", "timeout"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_broker(directory: Path, port: int) -> subprocess.Popen[bytes]:
    executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(executable).exists():
        sys.exit("mosquitto is not installed: apt-get install -y mosquitto")
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    broker = subprocess.Popen([executable, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return broker
        except OSError:
            time.sleep(0.05)
    broker.kill()
    sys.exit("mosquitto did not start")


def write_worker_config(directory: Path, port: int) -> Path:
    config = directory / "config.yaml"
    config.write_text(
        f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n"
        f"worker:\n  group_name: {GROUP}\n  playbook_directory: {HERE / 'playbooks'}\n"
        f"  ansible_playbook_path: {Path(sys.executable).parent / 'ansible-playbook'}\n"
        "  status_interval: 0.2\n"
        "  templates: templates.yml\n"
    )
    return config


def wait_until_connected(log: Path, worker: subprocess.Popen[bytes]) -> None:
    """A job published before any worker subscribed would reach nobody: wait for the worker."""
    deadline = time.monotonic() + 30
    while "connected to broker" not in log.read_text():
        if worker.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the worker did not connect:\n{log.read_text()}")
        time.sleep(0.05)


def describe(status: dict[str, Any]) -> str:
    counts = (
        f"ok={status['tasks_ok']} changed={status['tasks_changed']} failed={status['tasks_failed']} "
        f"skipped={status['tasks_skipped']} unreachable={status['tasks_unreachable']}"
    )
    elapsed = status.get("duration_seconds")
    clock = f"{elapsed:5.1f}s" if isinstance(elapsed, float) else "    - "
    task = status.get("current_task") or ""
    return f"  {clock}  {status['state']:<9} {counts}  {task}"


async def watch_job(port: int) -> dict[str, Any]:
    topics = Topics("ansible", GROUP)
    task_id = "demo-" + uuid.uuid4().hex[:6]
    options = LinkOptions(host="127.0.0.1", port=port, client_id="demo-controller")
    async with open_mqtt_link(options) as link:
        await link.subscribe(topics.status(task_id), 1)
        job = {"task_id": task_id, "playbook": "hello.yml", "inventory": "inventory.ini"}
        print(f"controller: publishing job {task_id} to {topics.tasks}")
        print(f"controller: following {topics.status(task_id)} (retained)\n")
        await link.publish(topics.tasks, json.dumps(job).encode(), qos=2)
        with trio.fail_after(120):
            async for message in link.messages():
                status: dict[str, Any] = json.loads(message.payload)
                print(describe(status))
                if status["state"] in TERMINAL:
                    return status
    raise RuntimeError("the link closed before the job ended")


def main() -> int:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ansible-worker-demo-") as scratch:
        directory = Path(scratch)
        broker = start_broker(directory, port)
        print(f"broker: mosquitto listening on 127.0.0.1:{port}")
        config = write_worker_config(directory, port)
        worker_log = (directory / "worker.log").open("wb")
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "ansible-worker"), "run", "-c", str(config)],
            stdout=worker_log,
            stderr=worker_log,
        )
        print(f"worker: ansible-worker run -c {config}")
        try:
            wait_until_connected(directory / "worker.log", worker)
            final = trio.run(watch_job, port)
            print("\nfinal status (retained on the status topic):")
            print(json.dumps(final, indent=2))
            broker_options = ["--broker", f"mqtt://127.0.0.1:{port}", "--group", GROUP]
            controller = str(Path(sys.executable).parent / "ansible-worker")
            command = ["submit", "hello.yml", "-i", "inventory.ini", "-e", "greeting=hi", "--wait"]
            print(f"\n$ ansible-worker {' '.join(command)}")
            submitted = subprocess.run([controller, *command, *broker_options], check=False)
            print("\n$ ansible-worker templates")
            subprocess.run([controller, "templates", *broker_options], check=False)
            command = ["launch", "hello", "-e", "greeting='hello from a template'", "--wait"]
            print(f"\n$ ansible-worker {' '.join(command)}")
            launched = subprocess.run([controller, *command, *broker_options], check=False)
            print("\n$ ansible-worker workers")
            subprocess.run([controller, "workers", *broker_options], check=False)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
            broker.terminate()
            broker.wait(timeout=10)
            worker_log.close()
            print("\nworker log:")
            print((directory / "worker.log").read_text().rstrip())
        return 0 if final["state"] == "success" and submitted.returncode == launched.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
