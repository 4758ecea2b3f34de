"""What anyone on the broker can send a job's page: markup, colour codes, huge and deep events stay text, within bounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import Broker, client_for
from tests.dashboard.browser import BROWSER_TESTS, click, dashboard, get_json, text_of, wait_until

pytestmark = BROWSER_TESTS

# Markup that runs script if it ever becomes markup: every text of the hostile job carries some.
EVIL = '<img src=x onerror="window.owned=1"><svg onload="window.owned=1"></svg><script>window.owned=1</script>'


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"bottom": EVIL}
    for _ in range(levels):
        value = {EVIL: value}
    return value


async def _publish_hostile_job(broker: Broker, group: str) -> None:
    """A running job whose every text is markup, colour codes, huge or deep, as anyone on the broker could send."""
    async with client_for(broker, group) as client:
        status = {"task_id": "evil", "state": "running", "playbook": EVIL, "worker_id": EVIL, "created_at": EVIL}
        await client.publish(client.topics.status("evil"), json.dumps(status).encode(), qos=1, retain=True)
        topic = client.topics.events("evil")
        common = {"time": "2026-12-01T10:00:00Z", "play": EVIL, "play_uuid": "p", "task": EVIL, "task_uuid": "t"}
        events: list[bytes] = [
            json.dumps({**common, "seq": 1, "event": "playbook_on_play_start", "line": f"PLAY [{EVIL}]"}).encode(),
            json.dumps({**common, "seq": 2, "event": "playbook_on_task_start", "action": EVIL}).encode(),
            b"\xff\xfe{not utf-8 at all",
            ('{"seq": 3, "event": "runner_on_ok", "data": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001).encode(),
            json.dumps(
                {
                    **common,
                    "seq": 4,
                    "event": "runner_on_failed",
                    "host": EVIL,
                    "status": "failed",
                    "duration": 1.5,
                    "line": f"\x1b[31mfatal: [{EVIL}]: FAILED! => \x1b]8;;javascript:alert(1)\x1b\\link\x1b[0m",
                    "result": {
                        "msg": f"\x1b[1;31m{EVIL}\x1b[0m",
                        "stdout": EVIL,
                        "stderr": EVIL,
                        "rc": EVIL,
                        "diff": EVIL,
                    },
                    "data": deep(150),
                }
            ).encode(),
            json.dumps(
                {
                    **common,
                    "seq": 5,
                    "event": "runner_on_failed",
                    "host": "huge",
                    "status": "failed",
                    "result": {"msg": "too much", "stdout": EVIL * 20_000},
                }
            ).encode(),
        ]
        for payload in events:
            await client.publish(topic, payload, qos=1)


def test_hostile_event_text_stays_text_and_within_bounds(
    broker: Broker, group: str, tmp_path: Path, browser: WebDriver
) -> None:
    made = "return document.querySelectorAll('img, svg script, iframe, [onerror], [onload], body script:not([src])').length;"
    with dashboard(broker, group, tmp_path / "dashboard.log") as url:
        browser.get(url + "#/job/evil")
        trio.run(_publish_hostile_job, broker, group)
        wait_until(browser, lambda d: "failed on" in text_of(d, "#failures"), message="the failure was never shown")
        # Every text is shown as the text it is.
        assert EVIL in text_of(browser, "#failures")
        assert EVIL in text_of(browser, "#tasks")
        assert "fatal: [" + EVIL in text_of(browser, "#output")
        assert "\x1b" not in text_of(browser, "#output")
        click(browser, "#tasks button.cell-failed:not([aria-label^=huge])")
        wait_until(browser, lambda d: "The whole result (JSON)" in text_of(d, "#result-body"), message="no result")
        browser.execute_script("document.querySelectorAll('#result-body details').forEach(d => d.open = true);")
        assert EVIL in text_of(browser, "#result-body")
        assert browser.execute_script(made) == 0
        assert browser.execute_script("return window.owned === undefined;")
        # What the page holds of it stays within the bounds, however big the event was.
        code, page = get_json(url + "api/jobs/evil/page")
        assert code == 200
        assert len(json.dumps(page)) < 64 * 1024
        for host in (0, 1):
            code, result = get_json(url + f"api/jobs/evil/results/0/{host}")
            assert code == 200
            assert len(json.dumps(result)) < 64 * 1024
        assert "dropped" in result["results"][-1]
