"""extra_vars reach Ansible as data: every string is tagged unsafe."""

from __future__ import annotations

from typing import Any

import yaml
from ansible.parsing.utils.yaml import from_yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_worker.run.extra_vars import dump_unsafe_yaml


def test_unsafe_yaml_tags_every_string() -> None:
    text = dump_unsafe_yaml({"k": "{{ x }}", "n": [1, "y", {"z": None}]})
    assert text.count("!unsafe") == 5

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!unsafe", lambda loader, node: ("unsafe", loader.construct_scalar(node)))  # type: ignore[arg-type]
    loaded = yaml.load(text, Loader=Loader)  # noqa: S506 - a local loader that only adds one tag
    assert loaded == {
        ("unsafe", "k"): ("unsafe", "{{ x }}"),
        ("unsafe", "n"): [1, ("unsafe", "y"), {("unsafe", "z"): None}],
    }


# What a job's extra_vars may hold: JSON's values.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_LOOK_ALIKES = ["1.10", "007", "yes", "Off", "null", "~", "", "2001-12-14", "1e3", "0x1F", "1:30", "<<", "=", ".inf"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text() | st.sampled_from(_LOOK_ALIKES), _JSON | st.sampled_from(_LOOK_ALIKES), max_size=6))
def test_ansible_loads_back_the_very_values_it_was_given(extra_vars: dict[str, Any]) -> None:
    # Ansible's own loader, as `--extra-vars=@file` reads the file: a string stays a string.
    assert from_yaml(dump_unsafe_yaml(extra_vars)) == extra_vars
