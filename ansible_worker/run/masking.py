"""Replace secret values with `********` in text and in decoded JSON, before anything is published."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

MASK = "********"


class Masker:
    """Masks a fixed set of secret values, as given and as JSON would escape them.

    A playbook can print a value as it is (`debug: var=x`), inside JSON (a module's result,
    where quotes and backslashes are escaped), or inside a `repr` (Python's own quoting).
    Each form is masked. Longer values are replaced first, so a secret that contains
    another is masked whole.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.add(secret)
            forms.add(json.dumps(secret)[1:-1])
            forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
            forms.add(repr(secret)[1:-1])
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, value: str) -> str:
        """`value` with every secret replaced by `MASK`."""
        if self._pattern is None:
            return value
        return self._pattern.sub(MASK, value)

    def tree(self, value: Any) -> Any:
        """A copy of decoded JSON (dicts, lists, strings, numbers) with every string masked, keys too."""
        if self._pattern is None:
            return value
        return self._tree(value)

    def _tree(self, value: Any) -> Any:
        match value:
            case str():
                return self.text(value)
            case dict():
                return {
                    self.text(key) if isinstance(key, str) else key: self._tree(item) for key, item in value.items()
                }
            case list() | tuple():
                return [self._tree(item) for item in value]
            case _:
                return value
