"""Split a line of terminal output with ANSI colour codes into plain text and coloured parts, never markup."""

from __future__ import annotations

import re

# SGR sequences carry the colours; every other escape sequence is dropped.
_ESCAPE = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_COLOURS = {30: "black", 31: "red", 32: "green", 33: "yellow", 34: "blue", 35: "magenta", 36: "cyan", 37: "white"}

Parts = list[tuple[str, str]]


def ansi_parts(text: str) -> tuple[str, Parts | None]:
    """`text` without escape codes or control characters, and its parts as (classes, text) when it has colours.

    The page sets each part as text with the dashboard's own class names, so a hostile line
    cannot inject anything: no markup is ever made of it.
    """
    if "\x1b" not in text:
        plain = _plain(text)
        return plain, None
    parts: Parts = []
    classes: list[str] = []
    position = 0
    for match in _ESCAPE.finditer(text):
        _add(parts, classes, text[position : match.start()])
        position = match.end()
        if match.group(2) == "m":
            classes = _apply(classes, match.group(1))
    _add(parts, classes, text[position:])
    plain = "".join(piece for _, piece in parts)
    return plain, parts if any(names for names, _ in parts) else None


def _add(parts: Parts, classes: list[str], text: str) -> None:
    piece = _plain(text)
    if not piece:
        return
    names = " ".join(classes)
    if parts and parts[-1][0] == names:
        parts[-1] = (names, parts[-1][1] + piece)
    else:
        parts.append((names, piece))


def _plain(text: str) -> str:
    return _CONTROL.sub("", text.replace("\x1b", ""))


def _apply(classes: list[str], codes: str) -> list[str]:
    result = list(classes)
    for word in codes.split(";") if codes else ["0"]:
        # An empty parameter means 0. A longer number than any code means nothing, and int()
        # would refuse one of more than 4,300 digits.
        code = 0 if not word else int(word) if len(word) <= 3 else -1
        if code == 0:
            result = []
        elif code == 1:
            result = [*(c for c in result if c != "ansi-bold"), "ansi-bold"]
        elif code in _COLOURS or 90 <= code <= 97 or code == 39:
            result = [c for c in result if not c.startswith("ansi-fg-")]
            if code != 39:
                name = _COLOURS[code if code < 90 else code - 60]
                result.append(f"ansi-fg-{name}" + ("-bright" if code >= 90 else ""))
    return result
