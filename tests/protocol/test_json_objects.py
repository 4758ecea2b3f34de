"""The one bounded parse of a JSON object: an object comes back as it is, everything else is None, nothing raises."""

from __future__ import annotations

import pytest

from ansible_worker.protocol.json_objects import json_object

NOISE = [
    pytest.param(b"", id="empty"),
    pytest.param("", id="empty-text"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b'{"a": 1', id="cut-short"),
    pytest.param(b'{"a": "\xff"}', id="not-utf-8"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-past-recursion"),
    pytest.param(b'{"a": ' + b"9" * 5_000 + b"}", id="more-digits-than-python-converts"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"text"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"7", id="number"),
]


@pytest.mark.parametrize("payload", NOISE)
def test_anything_but_an_object_is_none(payload: bytes | str) -> None:
    assert json_object(payload) is None


def test_an_object_comes_back_from_bytes_or_text() -> None:
    assert json_object(b'{"state": "online", "n": [1, 2.5, null]}') == {"state": "online", "n": [1, 2.5, None]}
    assert json_object('{"task_id": "t"}') == {"task_id": "t"}


def test_the_cap_counts_the_payload_before_it_is_parsed() -> None:
    payload = b'{"pad": "' + b"x" * 100 + b'"}'
    assert json_object(payload, max_bytes=len(payload)) == {"pad": "x" * 100}
    assert json_object(payload, max_bytes=len(payload) - 1) is None
    # Padding that would parse to a small object still counts.
    assert json_object(b" " * 50 + b"{}", max_bytes=51) is None
