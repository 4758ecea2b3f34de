"""`${VAR}` expansion in the config file."""

from __future__ import annotations

import pytest

from ansible_worker.ops.expand import UnsetVariableError, expand_tree


def test_expansion_with_defaults_and_unset_variables() -> None:
    environ = {"HOST": "broker", "EMPTY": ""}
    tree = {"a": "${HOST}:${PORT:-1883}", "b": ["${EMPTY:-fallback}", "${EMPTY}", 5], "c": {"d": "plain $HOST"}}
    assert expand_tree(tree, environ) == {"a": "broker:1883", "b": ["fallback", "", 5], "c": {"d": "plain $HOST"}}
    with pytest.raises(UnsetVariableError) as caught:
        expand_tree({"mqtt": {"password": "${NOPE}"}}, environ)
    assert str(caught.value).startswith("mqtt.password: environment variable NOPE is not set")
