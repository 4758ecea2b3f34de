"""Read the templates file from the playbook directory and check it: its keys, its paths, its variable names."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from ansible_worker.protocol.validation import describe_errors
from ansible_worker.run.argv import resolve_inside, resolve_inventory, resolve_playbook
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.special_vars import SETTING, refused_names, show_name
from ansible_worker.templates.model import Template, TemplatesFile

# A templates file is written by hand: a few hundred kilobytes is a large one.
MAX_FILE_BYTES = 4 * 1024 * 1024


class TemplatesError(Exception):
    """The templates file cannot be used; `problems` holds one readable line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Templates:
    """The templates of one worker, as read from its file, by name."""

    by_name: dict[str, Template]
    source: str | None = None

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def get(self, name: str) -> Template | None:
        """The template called `name`, if there is one."""
        return self.by_name.get(name)


NO_TEMPLATES = Templates({})


def load_templates(playbook_directory: Path, relative: str, *, allowed_special_vars: Collection[str] = ()) -> Templates:
    """Read `relative` (inside `playbook_directory`) and check every template in it.

    Blocks (file reads): call it before the event loop starts. Errors: `TemplatesError`, one
    line per problem, each naming the key (`templates.deploy.survey.port.max: ...`).
    """
    base = playbook_directory.resolve()
    where = f"worker.templates ({relative})"
    try:
        path = resolve_inside(base, relative, "the templates file")
        if not path.is_file():
            raise JobRefusedError(f"the templates file is not a file: {relative!r}")
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except JobRefusedError as exc:
        raise TemplatesError([f"{where}: {exc}"]) from None
    except OSError as exc:
        raise TemplatesError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise TemplatesError([f"{where}: larger than {MAX_FILE_BYTES} bytes"])
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        raise TemplatesError([f"{where}:{at} invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    try:
        parsed = TemplatesFile.model_validate(document)
    except ValidationError as exc:
        raise TemplatesError([f"{where}: {line}" for line in describe_errors(exc)]) from None
    problems = [
        f"{where}: templates.{name}.{problem}"
        for name, template in parsed.templates.items()
        for problem in template_problems(base, template, allowed_special_vars)
    ]
    if problems:
        raise TemplatesError(problems)
    return Templates(dict(parsed.templates), source=relative)


def template_problems(base: Path, template: Template, allowed_special_vars: Collection[str]) -> list[str]:
    """What keeps one template from running here: a path outside the directory, a name Ansible reads itself."""
    problems = []
    # Another project's or revision's files are known only when its tree is made; the path
    # rules (relative, no `..`) are checked then, as for any job.
    own_tree = template.project is None and template.revision is None
    for key, check in (("playbook", resolve_playbook), ("inventory", resolve_inventory)):
        value = getattr(template, key)
        try:
            if own_tree:
                check(base, value)
            elif key == "playbook" or "," not in value:
                _relative_only(value, key)
        except JobRefusedError as exc:
            problems.append(f"{key}: {exc}")
    for key, names in (("extra_vars", list(template.extra_vars)), ("survey", list(template.survey))):
        for name, reason in refused_names(names, allowed_special_vars):
            problems.append(f"{key}.{show_name(name)}: {reason} (allow it with {SETTING})")
    return problems


def _relative_only(value: str, key: str) -> None:
    parts = Path(value).parts
    if Path(value).is_absolute() or ".." in parts:
        raise JobRefusedError(f"{key} must be relative to the playbook directory, without '..': {value!r}")
