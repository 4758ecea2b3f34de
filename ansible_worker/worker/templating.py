"""The worker's templates, from `worker.templates`: read and checked once, before the worker starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ansible_worker.templates.loading import NO_TEMPLATES, Templates, load_templates

if TYPE_CHECKING:
    from ansible_worker.ops.config import Settings


def worker_templates(settings: Settings) -> Templates:
    """The templates of `worker.templates`, checked; none when it is unset.

    Blocks (a file read). Errors: `TemplatesError`, one line per problem.
    """
    worker = settings.worker
    if worker.templates is None:
        return NO_TEMPLATES
    return load_templates(worker.playbook_directory, worker.templates, allowed_special_vars=worker.allowed_special_vars)
