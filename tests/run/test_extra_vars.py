"""extra_vars reach Ansible as data: every string is tagged unsafe."""

from __future__ import annotations

import yaml

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
