"""Notifications end to end: a real broker, real Ansible, and a real HTTP receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h11
import trio
import yaml

from ansible_worker.ops.config import DashboardSettings
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.ops.template_settings import NotificationTarget
from ansible_worker.protocol.models import JobStatus, State
from ansible_worker.worker.notifications import Notice, Notifier, body_of
from tests.conftest import Broker, make_settings, open_controller, running_worker, worker_config, worker_process
from tests.templates.test_launch import TEMPLATES

SECRET = "receiver-key"


@dataclass
class Receiver:
    """An HTTP server on loopback that answers each POST with the next of `answers` (then 200), or never."""

    answers: list[int] = field(default_factory=list)
    silent: bool = False
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    port: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        headers: dict[str, str] = {}
        body = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                headers = {name.decode().lower(): value.decode() for name, value in event.headers}
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        if self.silent:
            self.requests.append((headers, body, 0))
            self._ring()
            await trio.sleep_forever()
        code = self.answers.pop(0) if self.answers else 200
        self.requests.append((headers, body, code))
        self._ring()
        await stream.send_all(connection.send(h11.Response(status_code=code, headers=[("content-length", "0")])))
        await stream.send_all(connection.send(h11.EndOfMessage()))

    def _ring(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, within: float = 30) -> None:
        with trio.fail_after(within):
            while len(self.requests) < count:
                await self._changed.wait()

    def bodies(self, code: int = 200) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, answered in self.requests if answered == code]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, receiver.handle, 0, host="127.0.0.1")
        (listener,) = await nursery.start(serve)
        receiver.port = listener.socket.getsockname()[1]
        yield receiver
        nursery.cancel_scope.cancel()


def target(receiver: Receiver, **options: Any) -> dict[str, Any]:
    return {"name": "hook", "url": receiver.url, "secret": SECRET, "backoff": 0.05, **options}


async def test_each_terminal_event_arrives_once_signed(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with receiving(Receiver()) as receiver:
        settings = make_settings(
            broker.port,
            playbook_dir,
            group,
            state_dir=playbook_dir.parent / "state",
            notifications=[target(receiver, on=["success", "failed", "timeout"])],
        )
        async with open_controller(broker, group) as controller, running_worker(settings):
            for task_id, playbook, extra in (
                ("n-ok", "quick.yml", {}),
                ("n-fail", "fail.yml", {}),
                ("n-slow", "sleep.yml", {"timeout": 1}),
            ):
                await controller.submit(
                    {"task_id": task_id, "playbook": playbook, "inventory": "one_host.ini", **extra}
                )
                await controller.wait_terminal(task_id)
            await receiver.wait_for(3)
            await controller.sync()
    assert sorted((body["task_id"], body["event"]) for body in receiver.bodies()) == [
        ("n-fail", "failed"),
        ("n-ok", "success"),
        ("n-slow", "timeout"),
    ]
    for headers, body, _ in receiver.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-ansible-worker-signature"] == expected
    # Nothing came twice: three events asked for, three requests.
    assert len(receiver.requests) == 3


async def test_a_500_then_200_delivers_once(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with receiving(Receiver(answers=[500])) as receiver:
        settings = make_settings(broker.port, playbook_dir, group, notifications=[target(receiver, on=["success"])])
        async with open_controller(broker, group) as controller, running_worker(settings):
            await controller.submit({"task_id": "retry-1", "playbook": "quick.yml", "inventory": "one_host.ini"})
            await controller.wait_terminal("retry-1")
            await receiver.wait_for(2)
    assert [code for _, _, code in receiver.requests] == [500, 200]
    assert [body["task_id"] for body in receiver.bodies()] == ["retry-1"]


async def test_a_target_that_never_answers_does_not_delay_the_job(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    async with receiving(Receiver(silent=True)) as receiver:
        settings = make_settings(
            broker.port, playbook_dir, group, notifications=[target(receiver, on=["started", "success"], timeout=60)]
        )
        async with open_controller(broker, group) as controller, running_worker(settings):
            await controller.submit({"task_id": "silent-1", "playbook": "quick.yml", "inventory": "one_host.ini"})
            # The receiver holds the `started` notification open for a minute; the job ends well before.
            final = await controller.wait_terminal("silent-1", within=20)
            await receiver.wait_for(1)
    assert final["state"] == "success"


async def test_a_template_jobs_notification_is_filtered_linked_and_masked(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump(TEMPLATES))
    async with receiving(Receiver()) as receiver:
        settings = make_settings(
            broker.port,
            playbook_dir,
            group,
            templates="templates.yml",
            notifications=[target(receiver, on=["success"], templates=["gr*"])],
        )
        settings = settings.model_copy(update={"dashboard": DashboardSettings(url="https://dash.example/")})
        async with open_controller(broker, group) as controller, running_worker(settings):
            await controller.submit({"task_id": "plain", "playbook": "quick.yml", "inventory": "one_host.ini"})
            await controller.wait_terminal("plain")
            launch = {"task_id": "templated", "template": "greet", "extra_vars": {"greeting": "secret words"}}
            await controller.submit(launch)
            await controller.wait_terminal("templated")
            await receiver.wait_for(1)
            await controller.sync()
    # The plain job matches no template pattern: only the launch is told.
    ((_, body, _),) = receiver.requests
    sent = json.loads(body)
    assert (sent["task_id"], sent["template"], sent["event"]) == ("templated", "greet", "success")
    assert sent["dashboard_url"] == "https://dash.example/#/job/templated"
    assert sent["status"]["output"]["greeting"] == "********"
    assert b"secret words" not in body


async def test_a_restart_does_not_send_again(tmp_path: Path) -> None:
    """The key is kept in the state directory: a worker that posts the same status after a restart stays quiet."""
    status = JobStatus(task_id="again", state=State.FAILED, playbook="fail.yml", error_message="boom")
    async with receiving(Receiver()) as receiver:
        targets = [NotificationTarget.model_validate(target(receiver, on=["failed"]))]
        for _ in range(2):
            notifier = Notifier(targets, dashboard_url=None, state_dir=tmp_path, metrics=WorkerMetrics())
            notifier.offer_status(status)
            notifier.offer_status(status)
            notifier.close()
            with trio.fail_after(30):
                await notifier.serve()
    assert len(receiver.requests) == 1
    assert (tmp_path / "notifications-sent").read_text().count("\n") == 1


async def test_a_targets_url_never_reaches_the_log(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    """Slack's and Teams' URLs carry their token in the path: not even at DEBUG does the log show it."""
    async with receiving(Receiver(answers=[500])) as receiver:
        url = receiver.url + "/T000/B000/token-in-the-path"
        config = worker_config(
            tmp_path / "worker.json",
            broker,
            playbook_dir,
            group,
            notifications=[{"url": url, "on": ["success"], "backoff": 0.05}],
        )
        document = json.loads(config.read_text())
        config.write_text(json.dumps({**document, "log_level": "DEBUG"}))
        async with worker_process("run", "-c", str(config)) as worker, open_controller(broker, group) as controller:
            await worker.wait_for_line("connected to broker")
            await controller.submit({"task_id": "quiet-url", "playbook": "quick.yml", "inventory": "one_host.ini"})
            await controller.wait_terminal("quiet-url")
            await receiver.wait_for(2)
            await worker.wait_for_line("notification success to http://127.0.0.1")
            assert await worker.stop() == 0
    log = "\n".join(worker.lines)
    assert "token-in-the-path" not in log
    assert f"to http://127.0.0.1:{receiver.port} failed (attempt 1 of 5): HTTP 500" in log


def test_slack_and_teams_bodies_say_what_happened_and_escape_the_jobs_text() -> None:
    status = JobStatus(task_id="t1", state=State.FAILED, playbook="site.yml", error_message="<!channel> & friends")
    notice = Notice("failed", status)
    slack = NotificationTarget.model_validate({"url": "https://hooks.example/x", "format": "slack"})
    teams = NotificationTarget.model_validate({"url": "https://hooks.example/y", "format": "teams"})
    link = "https://dash.example"
    assert body_of(slack, notice, dashboard_url=link) == {
        "text": "ansible-worker: job t1 (playbook site.yml) failed: &lt;!channel&gt; &amp; friends"
        " <https://dash.example/#/job/t1|details>"
    }
    assert body_of(teams, notice, dashboard_url=None) == {
        "text": "ansible-worker: job t1 (playbook site.yml) failed: <!channel> & friends"
    }
