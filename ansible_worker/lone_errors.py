"""Let a lone error from an internal nursery leave as itself, not as a one-member exception group."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unwrap_lone_errors() -> Iterator[None]:
    """Re-raise a group of exactly one error (nested or not) as that error.

    For nurseries that are an implementation detail of a function, so that its callers
    can write `except OSError` or `except LinkLost`. A group of several errors is left as it
    is: flattening it would hide all but one.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if error is group:
            raise
        raise error from group.__cause__
