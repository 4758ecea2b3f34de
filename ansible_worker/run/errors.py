"""The run layer's refusal: a job that cannot run as asked, and the message that says why."""

from __future__ import annotations


class JobRefusedError(Exception):
    """The job cannot run as asked; the message becomes the status's `error_message`."""
