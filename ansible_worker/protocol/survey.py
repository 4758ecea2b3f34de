"""A template's survey: the rule of each variable a launcher may set, and the check of an answer against it.

Pure and shared by both sides: the worker checks every answer before a job is queued; the
`launch` command and the dashboard read the same rules to ask for answers and to turn typed
text into values. Every refusal names the variable and the rule it broke.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

SurveyType = Literal["string", "integer", "number", "boolean", "choice", "multichoice", "secret"]
# A survey variable is a top-level extra_vars name: an identifier Ansible accepts.
VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Choice = str | int | float

# Which rules apply to which types: a rule set where it means nothing is a mistake in the file.
_BOUNDED = {"string", "secret", "integer", "number", "multichoice"}
_PATTERNED = {"string", "secret"}
_CHOOSING = {"choice", "multichoice"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class SurveyError(ValueError):
    """An answer that breaks its variable's rule; the message names both."""


class SurveyRule(BaseModel):
    """The rule of one survey variable.

    `min`/`max` bound a number's value, a text's length in characters, and how many
    values a multichoice answer holds. `pattern` must match the whole text. A `secret` is
    a text whose value is masked like a credential and whose default is never published.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: SurveyType
    description: Annotated[str, StringConstraints(max_length=1024)] | None = None
    required: bool = False
    default: Any = None
    choices: Annotated[list[Choice], Field(min_length=1, max_length=1000)] | None = None
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    # Published instead of a secret's default: launchers learn that one exists, never its value.
    has_default: bool | None = None

    @model_validator(mode="after")
    def _check_rule(self) -> SurveyRule:
        kind = self.type
        if self.choices is not None and kind not in _CHOOSING:
            raise ValueError(f"choices: only for choice and multichoice, not {kind}")
        if self.choices is None and kind in _CHOOSING:
            raise ValueError(f"choices: required for a {kind}")
        if self.choices is not None and len({repr(choice) for choice in self.choices}) != len(self.choices):
            raise ValueError("choices: each choice may appear once")
        if (self.min is not None or self.max is not None) and kind not in _BOUNDED:
            raise ValueError(f"min/max: not for a {kind}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        if self.pattern is not None:
            if kind not in _PATTERNED:
                raise ValueError(f"pattern: only for string and secret, not {kind}")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern: not a regular expression: {exc}") from None
        if self.default is not None:
            try:
                object.__setattr__(self, "default", self.check("default", self.default))
            except SurveyError as exc:
                raise ValueError(f"default breaks its own rule: {str(exc).removeprefix('default: ')}") from None
        return self

    def check(self, name: str, value: object) -> Any:
        """`value` as the job gets it (an integer stays an integer), or `SurveyError` naming `name` and the rule."""
        kind = self.type
        if kind == "boolean":
            if not isinstance(value, bool):
                raise SurveyError(f"{name}: must be true or false (type boolean)")
            return value
        if kind == "integer":
            # JSON has one kind of number: 3.0 is the integer 3, and true is not one.
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SurveyError(f"{name}: must be a whole number (type integer)")
            self._bounds(name, value, "")
            return value
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise SurveyError(f"{name}: must be a number (type number)")
            self._bounds(name, value, "")
            return value
        if kind == "choice":
            return self._one_of(name, value)
        if kind == "multichoice":
            if not isinstance(value, list):
                raise SurveyError(f"{name}: must be a list of choices (type multichoice)")
            picked = [self._one_of(name, item) for item in value]
            if len({repr(item) for item in picked}) != len(picked):
                raise SurveyError(f"{name}: each choice may be given once (type multichoice)")
            self._bounds(name, len(picked), " choices")
            return picked
        if not isinstance(value, str):
            raise SurveyError(f"{name}: must be text (type {kind})")
        self._bounds(name, len(value), " characters")
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            shown = "" if kind == "secret" else f" {self.pattern!r}"
            raise SurveyError(f"{name}: must match the pattern{shown} (pattern)")
        return value

    def from_text(self, name: str, text: str) -> Any:
        """An answer typed as text (`-e port=8080`, a form field) as its type's value, then checked."""
        value: object = text
        lowered = text.strip().lower()
        if self.type == "integer":
            try:
                value = int(text.strip())
            except ValueError:
                raise SurveyError(f"{name}: must be a whole number (type integer)") from None
        elif self.type == "number":
            try:
                number = float(text.strip())
            except ValueError:
                raise SurveyError(f"{name}: must be a number (type number)") from None
            value = int(number) if number.is_integer() and "." not in text and "e" not in lowered else number
        elif self.type == "boolean":
            if lowered not in _TRUE | _FALSE:
                raise SurveyError(f"{name}: must be true or false (type boolean)")
            value = lowered in _TRUE
        elif self.type == "choice":
            value = self._choice_from_text(text)
        elif self.type == "multichoice":
            value = [self._choice_from_text(part.strip()) for part in text.split(",") if part.strip()]
        return self.check(name, value)

    def public(self) -> SurveyRule:
        """The rule as the catalogue publishes it: a secret's default is replaced by `has_default`."""
        if self.type != "secret":
            return self
        return self.model_copy(update={"default": None, "has_default": self.default is not None})

    def _bounds(self, name: str, size: float, unit: str) -> None:
        if self.min is not None and size < self.min:
            raise SurveyError(f"{name}: must be at least {self.min:g}{unit} (min)")
        if self.max is not None and size > self.max:
            raise SurveyError(f"{name}: must be at most {self.max:g}{unit} (max)")

    def _one_of(self, name: str, value: object) -> Choice:
        for choice in self.choices or []:
            # `True == 1` in Python: a boolean never matches a number.
            if type(choice) is type(value) and choice == value:
                return choice
        shown = ", ".join(repr(choice) for choice in (self.choices or [])[:20])
        raise SurveyError(f"{name}: must be one of {shown} (choices)")

    def _choice_from_text(self, text: str) -> object:
        for choice in self.choices or []:
            if str(choice) == text:
                return choice
        return text


Survey = dict[VariableName, SurveyRule]


def check_answers(survey: Mapping[str, SurveyRule], answers: Mapping[str, Any], *, template: str) -> dict[str, Any]:
    """The survey's variables as the job gets them: each answer checked, defaults filled in.

    Errors: `SurveyError` for the first answer that breaks its rule, names no survey
    variable, or is missing while required (with no default).
    """
    for name in answers:
        if name not in survey:
            raise SurveyError(f"{name}: not a survey variable of template {template!r}")
    values: dict[str, Any] = {}
    for name, rule in survey.items():
        if name in answers:
            values[name] = rule.check(name, answers[name])
        elif rule.default is not None:
            values[name] = rule.default
        elif rule.required:
            raise SurveyError(f"{name}: an answer is required (required)")
    return values


def secret_values(survey: Mapping[str, SurveyRule], values: Mapping[str, Any]) -> list[str]:
    """The values of the secret variables among `values`: what a job's masker must hide."""
    return [value for name, value in values.items() if name in survey and survey[name].type == "secret"]
