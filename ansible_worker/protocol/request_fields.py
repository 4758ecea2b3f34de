"""The field types of a task request, each with the rules it checks on its own: tags, limits, ad-hoc, locks, retry."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints


def split_commas(value: object) -> object:
    """Accept `"a,b"` as well as `["a", "b"]`: both forms are common in controllers."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def no_option_like(value: str) -> str:
    # Defence in depth: values are passed as `--opt=VALUE`, but a leading dash still reads
    # as a mistake and `@file` would make Ansible read a file on the worker.
    if value.startswith(("-", "@")):
        raise ValueError("must not start with '-' or '@'")
    return value


def no_limit_file(value: str) -> str:
    # Ansible splits a limit on commas, or else on colons and whitespace, strips each pattern
    # (Unicode whitespace too) and reads host names from a file for every pattern that then
    # starts with '@' (`split_host_pattern` and `InventoryManager.subset` in
    # ansible/inventory/manager.py): "web, @/etc/shadow" reads /etc/shadow. '@' means nothing
    # else in Ansible's patterns and no valid host name holds it, so any '@' is refused: a rule
    # that needs no copy of Ansible's parsing, and that answers alike whether the file exists.
    if "@" in value:
        raise ValueError("must not contain '@': Ansible reads '@file' patterns from a file on the worker")
    return value


Tag = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(no_option_like)]
TagList = Annotated[list[Tag], BeforeValidator(split_commas)]
Limit = Annotated[
    str,
    StringConstraints(min_length=1, max_length=65536),
    AfterValidator(no_option_like),
    AfterValidator(no_limit_file),
]


MAX_MODULE_ARGS_LENGTH = 65536
# Ansible renders these wherever it templates: the play's host pattern and a task's arguments.
_TEMPLATE_MARKERS = ("{{", "{%", "{#")


def _no_template(value: str) -> str:
    # Ansible templates an ad-hoc command's host pattern and its arguments on the worker, so
    # `{{ lookup('pipe', ...) }}` there would run a command on the worker itself.
    if any(marker in value for marker in _TEMPLATE_MARKERS):
        raise ValueError("must not contain '{{', '{%' or '{#': Ansible would template it on the worker")
    return value


def _plain_module_args(value: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(value, dict):
        return _plain_keys(value)
    # Ansible decodes escapes such as \u007b in `key=value` arguments (before templating) and
    # reads a string in braces as JSON (whose escapes decode too): either could spell '{{'.
    if len(value) > MAX_MODULE_ARGS_LENGTH:
        raise ValueError(f"a string may hold at most {MAX_MODULE_ARGS_LENGTH} characters")
    if "\\" in value:
        raise ValueError("a string must not contain a backslash: give module_args as an object instead")
    if value.lstrip().startswith("{"):
        raise ValueError("a string must not start with '{': give module_args as an object instead")
    return _no_template(value)


def _plain_keys(value: dict[str, Any]) -> dict[str, Any]:
    # The worker marks each string value as data (argv.module_arguments); a key cannot be
    # marked, so it may not look like a template. Ansible's JSON decoder reads `__ansible_vault`
    # and `__ansible_unsafe` objects as tagged data.
    def walk(item: Any) -> None:
        if isinstance(item, dict):
            for key, inner in item.items():
                if key.startswith("__ansible"):
                    raise ValueError(f"must not use the key {key!r}: Ansible reads it as tagged data")
                _no_template(key)
                walk(inner)
        elif isinstance(item, list):
            for inner in item:
                walk(inner)

    walk(value)
    return value


HostPattern = Annotated[
    str,
    StringConstraints(min_length=1, max_length=65536),
    AfterValidator(no_option_like),
    AfterValidator(no_limit_file),
    AfterValidator(_no_template),
]
ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,3}$")]
ModuleArgs = Annotated[str | dict[str, Any], AfterValidator(_plain_module_args)]


def _no_dotdot(value: str) -> str:
    # Git reads `a..b` as a range and `@{` as a reflog selector: neither names one commit.
    if ".." in value or "@{" in value or value.endswith((".lock", "/", ".")):
        raise ValueError("must name one commit, tag or branch (no '..', '@{', or a trailing '/', '.' or '.lock')")
    return value


# A commit id (full or abbreviated), a tag or a branch; never an option, range or reflog entry.
Revision = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,254}$"),
    AfterValidator(_no_dotdot),
]
ProjectName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
SHA256_PATTERN = r"^[0-9a-f]{64}$"


RetryOn = Literal["unreachable", "failed"]


# A lock is a name: a host of the inventory, or any name a request gives.
LockName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]+$")]
MAX_LOCKS = 5000


class Retry(BaseModel):
    """Run the hosts that ended in one of the `on` states again, in the same job."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    attempts: int = Field(ge=1, le=10, description="how many times at most the hosts are run again")
    delay: float = Field(0, ge=0, le=3600, allow_inf_nan=False, description="seconds to wait before each new attempt")
    on: Annotated[list[RetryOn], Field(min_length=1)] = Field(
        default_factory=lambda: list[RetryOn](["unreachable"]),
        description="which hosts run again: unreachable, failed or both",
    )
