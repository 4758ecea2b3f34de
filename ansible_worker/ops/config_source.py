"""Where settings come from: the default file and the prefix of the variables that override it.

Apart from `config`, so that printing help never loads pydantic-settings.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_CONFIG_FILE", "ENV_PREFIX"]

ENV_PREFIX = "ANSIBLE_WORKER_"
DEFAULT_CONFIG_FILE = Path("config.yaml")
