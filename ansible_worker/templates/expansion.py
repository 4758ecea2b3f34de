"""Turn a request that names a `template` into the full request the template describes, its answers checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ansible_worker.protocol.survey import SurveyError, check_answers, secret_values
from ansible_worker.templates.loading import Templates
from ansible_worker.templates.model import Template

# What a launcher may send beside the template's name: its answers, and what identifies and
# signs the message. Every other field of a job is the template's to set.
LAUNCH_FIELDS = frozenset({"task_id", "template", "extra_vars", "issued_at", "signature"})
# The fields of a job a launcher may not set; names outside the protocol are ignored, as on any request.
_JOB_FIELDS = frozenset(
    {
        "playbook",
        "inventory",
        "limit",
        "tags",
        "skip_tags",
        "verbosity",
        "check_mode",
        "diff_mode",
        "forks",
        "timeout",
        "git_pull",
        "credentials",
        "project",
        "revision",
        "content",
        "module",
        "module_args",
        "hosts",
        "background",
        "poll",
        "retry",
        "locks",
        "max_concurrent",
    }
)
_TEMPLATE_FIELDS = ("playbook", "inventory", "limit", "tags", "skip_tags", "credentials", "forks", "timeout")
_OPTIONAL_FIELDS = ("verbosity", "project", "revision", "locks", "max_concurrent", "retry")


class TemplateRefused(ValueError):
    """A request that cannot be expanded: no such template, a field it may not set, or a wrong answer."""


@dataclass(frozen=True)
class Expanded:
    """The request to validate as a job, and the secret answers to mask in all it reports."""

    document: dict[str, Any]
    secrets: list[str] = field(default_factory=list)


def expand_request(document: Mapping[str, Any], templates: Templates, *, templates_only: bool) -> Expanded:
    """`document` (a decoded task message) as a full request: expanded when it names a template.

    Pure. Errors: `TemplateRefused`, whose message names the variable and the rule an answer
    broke, the field a launcher may not set, or why a plain request is refused.
    """
    name = document.get("template")
    if name is None:
        if templates_only:
            raise TemplateRefused(
                "this worker runs templates only (worker.templates_only): name a `template` and give its answers"
            )
        return Expanded(dict(document))
    if not isinstance(name, str):
        raise TemplateRefused("template: must be a template's name (a string)")
    template = templates.get(name)
    if template is None:
        known = "it has none" if not templates.by_name else "see `ansible-worker templates`"
        raise TemplateRefused(f"template {name[:140]!r} is not one of this worker's templates ({known})")
    extra = sorted(_JOB_FIELDS & set(document))
    if extra:
        raise TemplateRefused(
            f"{', '.join(extra)}: set by template {name!r}; a launch gives only the survey's answers in extra_vars"
        )
    answers = document.get("extra_vars", {})
    if not isinstance(answers, dict):
        raise TemplateRefused("extra_vars: must be an object of survey answers")
    try:
        values = check_answers(template.survey, answers, template=name)
    except SurveyError as exc:
        raise TemplateRefused(f"extra_vars.{exc}") from None
    return Expanded(
        {
            **request_fields(template),
            **{key: document[key] for key in LAUNCH_FIELDS if key in document},
            "template": name,
            "extra_vars": {**template.extra_vars, **values},
        },
        secret_values(template.survey, values),
    )


def request_fields(template: Template) -> dict[str, Any]:
    """The job fields a template sets, as a task message spells them."""
    fields: dict[str, Any] = {key: getattr(template, key) for key in _TEMPLATE_FIELDS}
    fields.update(
        {
            key: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            for key in _OPTIONAL_FIELDS
            if (value := getattr(template, key)) is not None
        }
    )
    return {key: value for key, value in fields.items() if value is not None}
