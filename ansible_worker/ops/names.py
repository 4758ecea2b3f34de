"""The forms of the names settings give: groups, workers, projects and keys; environment variables."""

from __future__ import annotations

_NAME_CHARS = "A-Za-z0-9._-"
NAME_PATTERN = rf"^[{_NAME_CHARS}]{{1,128}}$"
ENVIRONMENT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
