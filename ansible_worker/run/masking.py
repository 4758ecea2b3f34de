"""Replace secret values with `********` in text and in decoded JSON, before anything is published."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from typing import Any

MASK = "********"
# How the callback plugin and the live events mark a value they cut: the cut may fall inside a secret.
TRUNCATED = "...[truncated]"


class Masker:
    """Masks a fixed set of secret values, as given and as JSON, Python or a shell would quote them.

    A playbook can print a value as it is (`debug: var=x`), inside JSON (a module's result,
    where quotes and backslashes are escaped), inside a `repr`, shell-quoted, or as a number.
    Each form is masked. Longer values are replaced first, so a secret that contains another
    is masked whole. Where a value was cut (`...[truncated]`, or the start of a window of
    output), the piece of a secret at the cut is masked too.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.update(
                {
                    secret,
                    json.dumps(secret)[1:-1],
                    json.dumps(secret, ensure_ascii=False)[1:-1],
                    repr(secret)[1:-1],
                    shlex.quote(secret),
                }
            )
        self._forms = sorted(forms, key=len, reverse=True)
        self._values = frozenset(forms)
        self._pattern = re.compile("|".join(map(re.escape, self._forms))) if self._forms else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, value: str) -> str:
        """`value` with every secret replaced by `MASK`, a secret's start at a `...[truncated]` cut included."""
        if self._pattern is None:
            return value
        masked = self._pattern.sub(MASK, value)
        if masked.endswith(TRUNCATED):
            masked = self._mask_cut_start(masked[: -len(TRUNCATED)]) + TRUNCATED
        return masked

    def window(self, value: str) -> str:
        """`text` for the newest part of a longer output: a secret's end at the start is masked too."""
        masked = self.text(value)
        for form in self._forms:
            for length in range(len(form) - 1, 0, -1):
                if masked.startswith(form[-length:]):
                    return MASK + masked[length:]
        return masked

    def tree(self, value: Any) -> Any:
        """A copy of decoded JSON with every string masked (keys too), and numbers that are secrets."""
        if self._pattern is None:
            return value
        return self._tree(value)

    def _mask_cut_start(self, head: str) -> str:
        """Mask the longest start of a secret that `head` ends with (the value was cut inside it)."""
        for form in self._forms:
            for length in range(len(form) - 1, 0, -1):
                if head.endswith(form[:length]):
                    return head[:-length] + MASK
        return head

    def _tree(self, value: Any) -> Any:
        match value:
            case str():
                return self.text(value)
            case bool() | None:
                return value
            case int() | float():
                return MASK if str(value) in self._values else value
            case dict():
                return {
                    self.text(key) if isinstance(key, str) else key: self._tree(item) for key, item in value.items()
                }
            case list() | tuple():
                return [self._tree(item) for item in value]
            case _:
                return value
