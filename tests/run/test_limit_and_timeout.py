"""What a message's limit and timeout may be: no `@file` Ansible would read on the worker, a finite bound.

The limit rule is compared with ansible-core's own limit splitting, so that a newer
ansible-core that reads a file the worker lets through makes a test fail. Then real jobs
through the broker (the intake refuses them) must be refused with nothing run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ansible_worker.protocol.models import MAX_TIMEOUT_SECONDS, TaskRequest
from ansible_worker.worker.intake import Accepted, Rejected, read_task_message
from tests.conftest import Broker, make_settings, open_controller, running_worker

BASE: dict[str, Any] = {"task_id": "t1", "playbook": "p.yml", "inventory": "one_host.ini"}


def _request(**fields: Any) -> TaskRequest:
    return TaskRequest.model_validate({**BASE, **fields})


# ---------------------------------------------------------------- limit, generated


def _ansible_reads_a_file(limit: str) -> bool:
    """Whether ansible-core would open a file for this `--limit` (`InventoryManager.subset`)."""
    from ansible.inventory.manager import split_host_pattern

    return any(pattern and pattern[0] == "@" for pattern in split_host_pattern(limit))


def _limit_refused(limit: str) -> bool:
    """Whether the model refuses this limit (and nothing else of the request)."""
    try:
        _request(limit=limit)
    except ValidationError as exc:
        failed = [error["loc"] for error in exc.errors()]
    else:
        return False
    assert failed == [("limit",)]
    return True


_spaces = st.text(
    st.sampled_from([" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u3000"]),
    max_size=3,
)
_hosts = st.sampled_from(["web", "db1", "all", "*.example.com", "web[1:3]", "~web\\d+", "10.0.0.1", "host1", "g_x"])
_file_refs = st.sampled_from(["@/etc/shadow", "@file", "@./x", "@", "@@x", "@~/hosts", "@C:\\x"])


@st.composite
def _limits_naming_a_file(draw: st.DrawFn) -> str:
    """Host patterns with at least one `@file` among them: any separator, whitespace, `&`/`!` prefix."""
    patterns = draw(st.lists(_hosts, max_size=4))
    for _ in range(draw(st.integers(1, 2))):
        patterns.insert(draw(st.integers(0, len(patterns))), draw(_file_refs))
    decorated = [
        draw(_spaces) + draw(st.sampled_from(["", "", "&", "!"])) + pattern + draw(_spaces) for pattern in patterns
    ]
    separator = draw(st.sampled_from([",", ", ", " ,", ":", " ", "\n", ",,"]))
    return separator.join(decorated)


@settings(max_examples=500, deadline=None)
@given(limit=_limits_naming_a_file())
@example(limit="web, @/etc/shadow")
@example(limit="web,@file")
@example(limit=" @file")
@example(limit="web:@file")
@example(limit="web:&@file")
@example(limit="web:!@file")
@example(limit="web\n@file")
@example(limit="web,\x1c@file")
def test_limit_that_names_a_file_is_refused(limit: str) -> None:
    assert _limit_refused(limit)


@settings(max_examples=1000, deadline=None)
@given(limit=st.text(min_size=1, max_size=40) | _limits_naming_a_file())
def test_whenever_ansible_would_read_a_file_the_limit_is_refused(limit: str) -> None:
    if _ansible_reads_a_file(limit):
        assert _limit_refused(limit)


@st.composite
def _plain_limits(draw: st.DrawFn) -> str:
    patterns = draw(
        st.lists(st.sampled_from(["", "&", "!"]).flatmap(lambda p: _hosts.map(lambda h: p + h)), min_size=1, max_size=5)
    )
    separator = draw(st.sampled_from([",", ", ", ":", " "]))
    return separator.join(patterns)


@settings(max_examples=300, deadline=None)
@given(limit=_plain_limits())
def test_limits_without_a_file_pass_unchanged(limit: str) -> None:
    assert not _ansible_reads_a_file(limit)
    assert _request(limit=limit).limit == limit


# ---------------------------------------------------------------- timeout


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("Infinity", "invalid task: timeout: Input should be a finite number (got inf)"),
        ("-Infinity", "invalid task: timeout: Input should be a finite number (got -inf)"),
        ("NaN", "invalid task: timeout: Input should be a finite number (got nan)"),
        ("1e999", "invalid task: timeout: Input should be a finite number (got inf)"),
        ("604801", f"invalid task: timeout: Input should be less than or equal to {MAX_TIMEOUT_SECONDS} (got 604801)"),
        ("0", "invalid task: timeout: Input should be greater than 0 (got 0)"),
    ],
)
def test_timeout_is_finite_and_bounded(raw: str, reason: str) -> None:
    payload = b'{"task_id": "t1", "playbook": "p.yml", "inventory": "i", "timeout": ' + raw.encode() + b"}"
    assert read_task_message(payload, max_bytes=1024) == Rejected("t1", reason)


def test_timeout_within_bounds_is_kept() -> None:
    for value in ("0.5", "604800"):
        payload = b'{"task_id": "t1", "playbook": "p.yml", "inventory": "i", "timeout": ' + value.encode() + b"}"
        outcome = read_task_message(payload, max_bytes=1024)
        assert isinstance(outcome, Accepted)
        assert outcome.request.timeout == float(value)


# ---------------------------------------------------------------- attacks through the broker


async def test_limit_naming_a_file_is_refused_and_does_not_tell_whether_it_exists(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    secret, missing = tmp_path / "secret", tmp_path / "missing"
    secret.write_text("host1\n")
    limits = {
        "comma": f"host1,@{secret}",
        "comma-missing": f"host1,@{missing}",
        "space": f"host1, @{secret}",
        "space-missing": f"host1, @{missing}",
        "colon": f"host1:@{secret}",
        "lead": f" @{secret}",
        "newline": f"host1\n@{secret}",
    }
    markers = {name: tmp_path / f"{name}.ran" for name in limits}
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group)),
    ):
        for name, limit in limits.items():
            job = {"task_id": f"limit-{name}", "playbook": "touch.yml", "inventory": "one_host.ini", "limit": limit}
            await controller.submit({**job, "extra_vars": {"marker": str(markers[name])}})
        finals = {name: await controller.wait_terminal(f"limit-{name}") for name in limits}
    expected = "invalid task: limit: must not contain '@': Ansible reads '@file' patterns from a file on the worker"
    assert {name: (final["state"], final["error_message"]) for name, final in finals.items()} == dict.fromkeys(
        limits, ("failed", expected)
    )
    assert [name for name, marker in markers.items() if marker.exists()] == []
