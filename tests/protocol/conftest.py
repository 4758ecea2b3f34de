"""The key pairs the protocol's tests sign with: alice, whom the worker trusts, and mallory, whom it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_worker.protocol.signing import TrustedKeys, generate_key_pair


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Two key pairs: alice, whom the worker trusts, and mallory, whom it does not."""
    paths = {}
    for name in ("alice", "mallory"):
        generate_key_pair(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
        paths[name] = tmp_path / name
    return paths


def trusted(keys: dict[str, Path]) -> TrustedKeys:
    return TrustedKeys.from_files({"alice": keys["alice"].with_suffix(".pub")})
