"""The pages say what the code does: links resolve, and docs/protocol.md names exactly the models' topics, fields and values."""

from __future__ import annotations

import enum
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from ansible_worker.ops.api_schema import MESSAGES
from tests.conftest import REPO
from tests.ops.markdown_pages import anchors, code_spans, links, section, tables

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", REPO / "SECURITY.md", REPO / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]
PROTOCOL = DOCS / "protocol.md"


def broken_links(page: Path, text: str) -> list[str]:
    """Each relative link of `page` that names no file, or a heading its page does not have."""
    problems = []
    for line, target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(REPO)}:{line}: {target}"
        if not destination.exists():
            problems.append(f"{where}: no such file")
        elif fragment and destination.suffix != ".md":
            problems.append(f"{where}: a fragment into a file that is not a page")
        elif fragment and fragment not in anchors(destination.read_text() if path else text):
            problems.append(f"{where}: no such heading in {destination.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page, page.read_text()) == []


def test_a_broken_link_is_found() -> None:
    """The check is not a rubber stamp: a missing file, a missing heading and a fragment into a file fail it."""
    text = "[a](docs/nowhere.md) [b](SECURITY.md#no-such-heading) [c](#the-tests) [d](pyproject.toml#x)\n## The tests\n"
    problems = broken_links(REPO / "README.md", text)
    assert [problem.split(": ", 2)[1] for problem in problems] == [
        "docs/nowhere.md",
        "SECURITY.md#no-such-heading",
        "pyproject.toml#x",
    ]


# --- docs/protocol.md against the models and docs/asyncapi.yaml


def asyncapi() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCS / "asyncapi.yaml").read_text()))


def address(topic: str) -> str:
    """A topic as the page writes it (`P/G/tasks/<task_id>/status`) in AsyncAPI's form."""
    parts = topic.split("/")
    named = {"P": "{prefix}", "G": "{group}"}
    return "/".join(named.get(part, re.sub(r"^<(\w+)>$", r"{\1}", part)) for part in parts)


def topic_table() -> dict[str, list[str]]:
    (table,) = tables(section(PROTOCOL.read_text(), "Topics"))
    assert table.header[:3] == ["topic", "publisher", "QoS"]
    return {address(code_spans(row[0])[0]): row for row in table.rows}


def test_protocol_names_every_topic_of_asyncapi_and_no_other() -> None:
    channels = {channel["address"] for channel in asyncapi()["channels"].values()}
    assert set(topic_table()) == channels
    # Every topic written anywhere on the page is one of them (or the shared subscription to jobs).
    written = [span for span in code_spans(PROTOCOL.read_text()) if re.match(r"(P/G|<prefix>/<group>)/", span)]
    written += [span.split("/", 2)[2] for span in code_spans(PROTOCOL.read_text()) if span.startswith("$share/")]
    assert written
    assert [
        span for span in written if address(span.replace("<prefix>", "P").replace("<group>", "G")) not in channels
    ] == []


def test_protocol_gives_each_topic_its_asyncapi_qos_and_retain_flag() -> None:
    document = asyncapi()
    rows = topic_table()
    checked = 0
    for operation in document["operations"].values():
        channel = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[1]]
        binding = operation.get("bindings", {}).get("mqtt")
        if binding is None:
            continue
        row = rows[channel["address"]]
        qos, retained = row[2], row[3]
        if qos.isdigit():  # `events_qos` is a setting: AsyncAPI gives its default
            assert int(qos) == binding["qos"], channel["address"]
        assert retained.startswith("yes" if binding["retain"] else "no"), channel["address"]
        checked += 1
    assert checked >= 7


def message_sections() -> dict[str, str]:
    """Each message's section of the page, by the stem of the schema it links to."""
    text = PROTOCOL.read_text()
    found: dict[str, str] = {}
    for title in re.findall(r"^## (.+)$", text, flags=re.M):
        body = section(text, title.replace("`", ""))
        for stem in set(re.findall(r"\]\(schemas/([\w-]+)\.json\)", body)):
            assert stem not in found, f"schemas/{stem}.json is linked from two sections"
            found[stem] = body
    return found


def field_rows(body: str) -> dict[str, list[str]]:
    """The first `field` table of a section: each field name, with its row's cells."""
    table = next(table for table in tables(body) if table.header[0] == "field")
    return {name: row for row in table.rows for name in code_spans(row[0])}


def test_protocol_documents_every_message() -> None:
    assert set(message_sections()) == set(MESSAGES)


@pytest.mark.parametrize("stem", sorted(MESSAGES))
def test_protocol_names_exactly_the_fields_of_each_message(stem: str) -> None:
    model, _ = MESSAGES[stem]
    assert set(field_rows(message_sections()[stem])) == set(model.model_fields)


def allowed_values(annotation: Any) -> set[str] | None:
    """The values a field may take when its type lists them (an enum or a Literal), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        choices = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return allowed_values(choices[0]) if len(choices) == 1 else None
    if typing.get_origin(annotation) is Literal:
        return {str(value) for value in typing.get_args(annotation)}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {str(member.value) for member in annotation}
    return None


@pytest.mark.parametrize("stem", sorted(MESSAGES))
def test_protocol_lists_exactly_the_values_of_each_field_that_has_them(stem: str) -> None:
    """A state, status or format: the row names every value the model allows, and no other."""
    model, _ = MESSAGES[stem]
    rows = field_rows(message_sections()[stem])
    for name, field in model.model_fields.items():
        values = allowed_values(field.annotation)
        if values is not None:
            assert set(code_spans(" | ".join(rows[name][1:]))) == values, f"{stem}.{name}"


def test_protocol_examples_use_only_real_states() -> None:
    """`"state": …` and `"status": …` in the page's examples are values the models know."""
    states: set[str] = set()
    statuses: set[str] = set()
    for model, _ in MESSAGES.values():
        for name, field in model.model_fields.items():
            values = allowed_values(field.annotation) or set()
            (states if name == "state" else statuses if name == "status" else set()).update(values)
    text = PROTOCOL.read_text()
    assert set(re.findall(r'"state": "(\w+)"', text)) <= states
    assert set(re.findall(r'"status": "(\w+)"', text)) <= statuses
    assert re.findall(r'"state": "(\w+)"', text)
