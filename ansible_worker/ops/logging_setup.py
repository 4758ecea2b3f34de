"""Configure the process's logging: one line per record, as text for people or JSON for machines."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

# The job a record is about, when it is logged from inside that job's task.
current_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_task_id", default=None)


def _utc(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc(record)


def task_id_of(record: logging.LogRecord) -> str | None:
    """The task a record is about: an explicit `task_id`, the job whose task logged it, or
    the first argument of a message that starts `task %s` (the convention of this code)."""
    explicit = getattr(record, "task_id", None)
    if isinstance(explicit, str):
        return explicit
    args = record.args
    if isinstance(record.msg, str) and record.msg.startswith("task %s") and isinstance(args, tuple) and args:
        first = args[0]
        if isinstance(first, str):
            return first
    return current_task_id.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and task_id and worker_id where they apply."""

    def __init__(self, worker_id: str | None) -> None:
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        """`record` as one line of JSON, with its exception's traceback if it has one."""
        entry: dict[str, object] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = task_id_of(record)
        if task_id is not None:
            entry["task_id"] = task_id
        if self.worker_id is not None:
            entry["worker_id"] = self.worker_id
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class SecretFilter(logging.Filter):
    """Masks the secrets of the running jobs (and the worker's own) in every line the worker logs."""

    def __init__(self) -> None:
        super().__init__()
        self._masks: list[Callable[[str], str]] = []

    @contextmanager
    def masking(self, mask: Callable[[str], str]) -> Iterator[None]:
        """Apply `mask` to every record logged inside the block (a job's secrets, while it runs)."""
        self._masks.append(mask)
        try:
            yield
        finally:
            self._masks.remove(mask)

    def apply(self, text: str) -> str:
        """`text` with every mask applied."""
        for mask in self._masks:
            text = mask(text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record's message and traceback in place; every record passes."""
        if not self._masks:
            return True
        if not isinstance(getattr(record, "task_id", None), str):
            record.task_id = task_id_of(record)
        record.msg, record.args = self.apply(record.getMessage()), None
        if record.exc_info:
            record.exc_text = self.apply(logging.Formatter().formatException(record.exc_info))
        return True


# The one filter of the process's log handlers.
secrets = SecretFilter()


def setup_logging(level: str, *, log_format: Literal["text", "json"] = "text", worker_id: str | None = None) -> None:
    """Send log records from `level` up to stderr, as text or JSON lines; paho's and httpx's from WARNING.

    paho's DEBUG lines show when `level` is DEBUG; httpx's never do (they hold whole URLs).

    Replaces the root logger's handlers, so calling it again changes the format rather than doubling lines.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker_id))
    else:
        handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(secrets)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # paho logs every packet at DEBUG; keep it for when the operator asks for DEBUG.
    logging.getLogger("mqtt").setLevel(level if level == "DEBUG" else "WARNING")
    # httpx logs each request's whole URL at INFO, and a webhook's URL holds its token (Slack's,
    # Teams'): never, whatever the level. The notifier says itself what failed, by target.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel("WARNING")
