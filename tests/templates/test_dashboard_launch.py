"""The dashboard's launch form in headless Chromium: built from the survey, checked, and run by a worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.conftest import Broker, worker_config
from tests.dashboard.browser import (
    axe_problems,
    broker_status,
    chromium,
    dashboard,
    have_chromium,
    process,
    text_of,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_chromium(), reason="needs Debian's chromium and chromium-driver"),
]

TEMPLATES = {
    "templates": {
        "greet": {
            "description": "Report the options a job was given",
            "playbook": "options.yml",
            "inventory": "inventory.ini",
            "limit": "host1",
            "survey": {
                "greeting": {"type": "secret", "required": True, "min": 6},
                "forks_wanted": {"type": "integer", "min": 1, "max": 3, "default": 2},
                "colour": {"type": "choice", "choices": ["red", "blue"], "default": "red"},
                "regions": {"type": "multichoice", "choices": ["eu", "us"]},
                "loud": {"type": "boolean", "default": False},
            },
            "schedule": [{"cron": "0 3 * * *", "extra_vars": {"greeting": "nightly hello"}}],
        }
    }
}


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def worker(broker: Broker, playbook_dir: Path, group: str, tmp_path: Path) -> Iterator[str]:
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump(TEMPLATES))
    config = worker_config(
        tmp_path / "worker.json", broker, playbook_dir, group, worker_id="w1", templates="templates.yml"
    )
    with process(["run", "-c", str(config)], tmp_path / "worker.log"):
        yield "w1"


def test_the_dashboard_launches_a_template_from_its_form(
    broker: Broker, group: str, worker: str, tmp_path: Path, browser: WebDriver
) -> None:
    with dashboard(broker, group, tmp_path / "dashboard.log", "--allow-actions") as url:
        browser.get(url)
        wait_until(browser, lambda d: d.find_elements("css selector", 'tr[data-template="greet"] button'))
        row = text_of(browser, 'tr[data-template="greet"]')
        assert "greeting*: secret" in row
        assert "nightly hello" not in browser.page_source
        browser.find_element("css selector", 'tr[data-template="greet"] button').click()
        form = browser.find_element("id", "launch-form")
        wait_until(browser, lambda d: form.is_displayed())
        assert axe_problems(browser) == []
        # A wrong answer is refused with the variable and the rule, and nothing runs.
        browser.find_element("css selector", 'input[name="greeting"]').send_keys("short")
        browser.find_element("id", "launch-button").click()
        wait_until(browser, lambda d: "refused" in text_of(d, "#launch-result"))
        assert text_of(browser, "#launch-result") == "refused: greeting: must be at least 6 characters (min)"
        secret = browser.find_element("css selector", 'input[name="greeting"]')
        secret.clear()
        secret.send_keys("hello from the form")
        number = browser.find_element("css selector", 'input[name="forks_wanted"]')
        number.clear()
        number.send_keys("3")
        Select(browser.find_element("css selector", 'select[name="colour"]')).select_by_visible_text("blue")
        browser.find_element("css selector", "fieldset[data-variable=regions] input[value='\"us\"']").click()
        browser.find_element("css selector", 'input[name="loud"]').click()
        browser.find_element("id", "launch-button").click()
        wait_until(browser, lambda d: text_of(d, "#job-id").startswith("job-"), message="no job page opened")
        task_id = text_of(browser, "#job-id")
        wait_until(browser, lambda d: text_of(d, "#job-state") == "success", message="the launched job did not succeed")
    status = broker_status(broker, group, task_id)
    assert status["state"] == "success"
    assert status["playbook"] == "options.yml"
    assert status["output"]["greeting"] == "********"
    assert "hello from the form" not in json.dumps(status)
