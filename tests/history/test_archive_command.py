"""`ansible-worker archive` from the command line and from the Kubernetes manifest, and the lines it logs when history may have a gap."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from ansible_worker.cli import build_parser
from ansible_worker.history import archiver as archiver_module
from ansible_worker.history.archiver import Archiver
from ansible_worker.history.command import archive_options
from ansible_worker.history.reader import open_history
from ansible_worker.mqtt.options import InboundMessage
from testing.broker import Broker
from tests.history.helpers import TOPICS, publish_status, publisher, status, wait_until
from tests.ops.test_deploy import manifests, shipped_settings

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")


async def test_archive_takes_the_broker_from_its_flags(broker: Broker, tmp_path: Path) -> None:
    """As the other commands: --broker and --group, and no config file at all."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    command = [
        *(EXECUTABLE, "archive", "--broker", f"mqtt://127.0.0.1:{broker.port}"),
        *("--group", TOPICS.group, "--history", url, "--keep", "30d"),
    ]
    # No config file is read: one at the default place (config.yaml here) would not load.
    (tmp_path / "config.yaml").write_text("mqtt: {host: [not, a, host]}\n")
    log = tmp_path / "archive.log"
    with log.open("wb") as stderr:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(partial(trio.run_process, command, cwd=tmp_path, check=False, stderr=stderr))
            try:
                await wait_until(lambda: _true((tmp_path / "history.db").exists()), within=60)
                async with publisher(broker) as link:
                    await publish_status(link, status("from-flags", "success"))

                async def archived() -> bool:
                    try:
                        async with open_history(url) as history:
                            return (await history.status("from-flags")) is not None
                    except Exception:  # the archiver may still be migrating the new file
                        return False

                await wait_until(archived, within=60)
            finally:
                process.send_signal(signal.SIGTERM)
    assert process.returncode == 0, log.read_text()
    assert f"archiving group {TOPICS.group} of 127.0.0.1:{broker.port}" in log.read_text()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--broker", "mqtt://127.0.0.1:1"], "--broker needs --history URL"),
        (["--broker", "http://127.0.0.1", "--history", "sqlite:///h.db"], "must start with mqtt://"),
        (["--broker", "mqtt://127.0.0.1:1", "--history", "sqlite:///h.db", "--keep", "5x"], "--keep '5x': must be"),
        (["--broker", "mqtt://127.0.0.1:1", "--history", "sqlite:///h.db", "--keep", "0d"], "longer than 0"),
        (["--broker", "mqtt://127.0.0.1:1", "--history", "sqlite:///h.db", "--group", "a/#"], "--group 'a/#'"),
        (["--broker", "mqtt://127.0.0.1:1", "--history", "sqlite:///h.db", "--prefix", "x/+"], "--prefix 'x/+'"),
    ],
)
def test_a_bad_flag_is_named(flags: list[str], said: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [EXECUTABLE, "archive", *flags], capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "h.db").exists()


def test_the_archiver_manifest_gives_it_a_store_on_its_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Deployment's environment over the shipped ConfigMap, read as `archive` reads them."""
    shipped_settings(tmp_path)
    pod = manifests()["Deployment/ansible-worker-archiver"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for variable in container["env"]:
        source = variable.get("valueFrom", {})
        value = "from-the-secret" if "secretKeyRef" in source else "archiver-pod" if "fieldRef" in source else None
        monkeypatch.setenv(variable["name"], variable.get("value", value))
    arguments = [
        str(tmp_path / "config.yaml") if arg == "/etc/ansible-worker/config.yaml" else arg for arg in container["args"]
    ]
    options = archive_options(build_parser().parse_args(arguments))
    settings = shipped_settings(tmp_path / "again")
    assert (options.link.host, options.link.port) == (settings.mqtt.host, settings.mqtt.port)
    assert options.link.password == "from-the-secret"
    assert options.link.client_id.startswith("ansible-worker-archive-")
    assert options.topics.group == settings.worker.group_name
    assert options.keep_seconds == 90 * 86400
    # The SQLite file lies on the claim, not on the read-only root or a scratch directory.
    assert options.url.startswith("sqlite:////")
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (volume,) = [name for path, name in mounts.items() if options.url.removeprefix("sqlite:///").startswith(path + "/")]
    claim = volumes[volume]["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in manifests()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


async def test_falling_behind_and_catching_up_are_logged(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full inbox means the broker queues, then drops: said once while behind, and again when caught up."""
    monkeypatch.setattr(archiver_module, "INBOX", 500)
    monkeypatch.setattr(archiver_module, "BATCH", 50)
    send, receive = trio.open_memory_channel[InboundMessage](archiver_module.INBOX)
    # Messages on a topic of no interest: the writer takes them, and the database is not the test.
    for number in range(archiver_module.INBOX):
        send.send_nowait(InboundMessage(f"{TOPICS.tasks}/job-{number}/events", b"{}", 0, False))
    send.close()
    caplog.set_level(logging.INFO, "ansible_worker.history.archiver")
    async with open_history(sqlite_url, migrate=True) as history:
        with trio.fail_after(30):
            await Archiver(history, TOPICS).run(receive)
    lines = [record.getMessage() for record in caplog.records]
    behind = [line for line in lines if "messages behind" in line]
    assert len(behind) == 1, lines
    assert "drops messages beyond its max_queued_messages; a gap in history is possible" in behind[0]
    assert lines.index(behind[0]) < lines.index("the archiver has caught up")
    assert lines.count("the archiver has caught up") == 1


async def test_a_reconnect_is_logged_with_what_may_be_missing(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.history.helpers import running_archiver

    caplog.set_level(logging.INFO, "ansible_worker.history.archiver")
    broker = Broker(tmp_path)
    broker.start()
    try:
        async with running_archiver(broker, sqlite_url) as (history, _):

            async def archived(task_id: str) -> bool:
                return await history.status(task_id) is not None

            # Archived: so the first link is up before the broker goes.
            async with publisher(broker) as link:
                await publish_status(link, status("before-restart", "success"))
            await wait_until(lambda: archived("before-restart"), within=60)
            broker.stop()
            broker.start()
            async with publisher(broker) as link:
                await publish_status(link, status("after-restart", "success"))
            await wait_until(lambda: archived("after-restart"), within=60)
    finally:
        broker.stop()
    (line,) = [record.getMessage() for record in caplog.records if "reconnected after" in record.getMessage()]
    assert "reading again every status and record the broker retains" in line
    assert "a job whose retained messages expired or were cleared meanwhile is missing from history" in line


async def _true(value: bool) -> bool:
    return value


def test_a_history_url_sqlalchemy_cannot_read_says_so_without_any_of_its_password() -> None:
    from ansible_worker.history.database import HistoryError, open_engine, shown_url

    url = "postgresql://admin:pa@ss:w0rdSecret@db.example/history"
    assert "w0rdSecret" not in shown_url(url)
    with pytest.raises(HistoryError) as raised:
        open_engine(url, create=False)
    assert "w0rdSecret" not in str(raised.value)
