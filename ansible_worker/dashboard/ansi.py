"""Turn a line of terminal output with ANSI colour codes into safe HTML spans."""

from __future__ import annotations

import html
import re

# SGR sequences carry the colours; every other escape sequence is dropped.
_ESCAPE = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_COLOURS = {30: "black", 31: "red", 32: "green", 33: "yellow", 34: "blue", 35: "magenta", 36: "cyan", 37: "white"}


def ansi_to_html(text: str) -> str:
    """HTML for `text`: every character escaped, SGR colours and bold as `<span class>`, other codes dropped.

    Only class names of our own reach the markup, so a hostile line cannot inject anything.
    """
    parts: list[str] = []
    classes: list[str] = []
    position = 0
    open_span = False
    for match in _ESCAPE.finditer(text):
        parts.append(_plain(text[position : match.start()]))
        position = match.end()
        if match.group(2) != "m":
            continue
        classes = _apply(classes, match.group(1))
        if open_span:
            parts.append("</span>")
            open_span = False
        if classes:
            parts.append(f'<span class="{" ".join(classes)}">')
            open_span = True
    parts.append(_plain(text[position:]))
    if open_span:
        parts.append("</span>")
    return "".join(parts)


def _plain(text: str) -> str:
    return html.escape(_CONTROL.sub("", text.replace("\x1b", "")), quote=True)


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
