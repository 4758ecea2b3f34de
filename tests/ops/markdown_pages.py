"""Read the project's Markdown pages as the tests need them: headings and their anchors, sections, tables, links.

Only what the pages use: ATX headings, pipe tables, inline links, fenced code blocks (whose
contents are never read as Markdown).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# An inline link or image: [text](target) or ![alt](target); the target ends at a space or ')'.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
_CODE_SPAN = re.compile(r"`([^`]+)`")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Each line outside fenced code blocks, with its 1-based number."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def headings(text: str) -> list[tuple[int, str]]:
    """Each heading's level and text (code spans' backticks removed), in order."""
    found = []
    for _, line in prose_lines(text):
        if match := _HEADING.match(line):
            found.append((len(match.group(1)), match.group(2).replace("`", "")))
    return found


def anchors(text: str) -> set[str]:
    """Every fragment a link may name in this page: its headings' anchors (repeats numbered) and HTML ids."""
    seen: dict[str, int] = {}
    found = set()
    for _, title in headings(text):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(_HTML_ANCHOR.findall(text))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """Each link target outside code (fenced blocks and code spans), with its line number."""
    found = []
    for number, line in prose_lines(text):
        for target in _LINK.findall(_CODE_SPAN.sub("", line)):
            found.append((number, target))
    return found


def section(text: str, title: str) -> str:
    """The body of the heading named `title`, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    numbers = dict(prose_lines(text))
    start = level = None
    for index, line in enumerate(lines):
        match = _HEADING.match(line) if index + 1 in numbers else None
        if match is None:
            continue
        if start is not None and level is not None and len(match.group(1)) <= level:
            return "\n".join(lines[start:index])
        if start is None and match.group(2).replace("`", "") == title:
            start, level = index + 1, len(match.group(1))
    if start is None:
        raise KeyError(f"no heading {title!r}")
    return "\n".join(lines[start:])


@dataclass(frozen=True)
class Table:
    """A pipe table: its header cells and its rows' cells, as written."""

    header: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    # A `|` inside a code span (`a\|b`) is escaped in the pages; split on the others only.
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def tables(text: str) -> list[Table]:
    """Every pipe table outside code blocks, in order."""
    found: list[Table] = []
    block: list[str] = []
    for _, line in [*prose_lines(text), (0, "")]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and re.fullmatch(r"\|?[\s:|-]+\|?", block[1].strip()):
            found.append(Table(_cells(block[0]), [_cells(row) for row in block[2:]]))
        block = []
    return found


def code_spans(text: str) -> list[str]:
    """The contents of every code span in `text`, line by line, outside fenced code blocks."""
    return [span for _, line in prose_lines(text) for span in _CODE_SPAN.findall(line)]
