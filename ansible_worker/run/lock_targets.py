"""The hosts a job's inventory and limit resolve to, as `ansible-inventory` says in the job's tree; cached by content.

A job's default locks are these hosts. `ansible-inventory --list` runs in the job's tree, with
the job's environment, bounded in time; its answer is kept by the SHA-256 of the inventory's
files (every file of an inventory directory), the limit and the program, so that a job of the
same inventory costs nothing more. A dynamic inventory (a script or plugin that asks another
system) is run again only when its files change: give such jobs `locks` explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import trio

from ansible_worker.run.errors import JobRefusedError

RESOLVE_TIMEOUT = 60.0
CACHE_SIZE = 256
# An inventory directory larger than this is hashed no further: its answer is not cached.
MAX_HASHED_FILES = 2000
MAX_HASHED_BYTES = 64 * 1024 * 1024
MAX_OUTPUT_BYTES = 64 * 1024 * 1024


class LockTargets:
    """Resolve and cache the hosts of inventories; one per worker."""

    def __init__(self, ansible_inventory: str | None, *, timeout: float = RESOLVE_TIMEOUT) -> None:
        self.ansible_inventory = ansible_inventory
        self.timeout = timeout
        self._cache: OrderedDict[str, frozenset[str]] = OrderedDict()
        self.resolved = 0
        self.cached = 0

    async def hosts(self, inventory: str, limit: str | None, *, cwd: Path, env: Mapping[str, str]) -> frozenset[str]:
        """The hosts `inventory` (a resolved path, or a host list) and `limit` select.

        Errors: `JobRefusedError` when ansible-inventory cannot say, or not in time.
        Cancellation: ansible-inventory is ended.
        """
        key = _content_key(inventory, limit, self.ansible_inventory)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            self.cached += 1
            return self._cache[key]
        found = await self._run(inventory, limit, cwd=cwd, env=env)
        self.resolved += 1
        if key is not None:
            self._cache[key] = found
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return found

    async def _run(self, inventory: str, limit: str | None, *, cwd: Path, env: Mapping[str, str]) -> frozenset[str]:
        if self.ansible_inventory is None:
            raise JobRefusedError("cannot resolve the job's hosts for its locks: ansible-inventory not found")
        argv = [self.ansible_inventory, f"--inventory={inventory}", "--list"]
        if limit is not None:
            argv.append(f"--limit={limit}")
        with trio.move_on_after(self.timeout) as bound:
            done = await trio.run_process(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if bound.cancelled_caught:
            raise JobRefusedError(
                f"cannot resolve the job's hosts for its locks: ansible-inventory took longer than {self.timeout:g}s"
                " (give the job its locks, or locks: [])"
            )
        if done.returncode != 0 or len(done.stdout) > MAX_OUTPUT_BYTES:
            error = done.stderr.decode(errors="replace").strip().splitlines()
            detail = error[-1][:500] if error else f"exit code {done.returncode}"
            raise JobRefusedError(f"cannot resolve the job's hosts for its locks: ansible-inventory: {detail}")
        try:
            return inventory_hosts(json.loads(done.stdout))
        except (ValueError, RecursionError) as exc:
            raise JobRefusedError(f"cannot resolve the job's hosts for its locks: {exc}") from None


def inventory_hosts(listing: object) -> frozenset[str]:
    """Every host of an `ansible-inventory --list` answer: its groups' hosts and its hostvars' names."""
    if not isinstance(listing, dict):
        raise ValueError("ansible-inventory did not answer with a JSON object")
    hosts: set[str] = set()
    for name, group in listing.items():
        if not isinstance(group, dict):
            continue
        if name == "_meta":
            hostvars = group.get("hostvars")
            if isinstance(hostvars, dict):
                hosts.update(str(host) for host in hostvars)
            continue
        members = group.get("hosts")
        if isinstance(members, list):
            hosts.update(str(host) for host in members)
    return frozenset(hosts)


def _content_key(inventory: str, limit: str | None, program: str | None) -> str | None:
    """The SHA-256 naming what an answer depends on, or None when it cannot be told (too large, unreadable)."""
    digest = hashlib.sha256()
    for part in (program or "", inventory, limit or ""):
        digest.update(part.encode() + b"\0")
    if "," in inventory:
        return digest.hexdigest()
    path = Path(inventory)
    try:
        files = [path] if path.is_file() else sorted(item for item in path.rglob("*") if item.is_file())
        if len(files) > MAX_HASHED_FILES:
            return None
        total = 0
        for item in files:
            data = item.read_bytes()
            total += len(data)
            if total > MAX_HASHED_BYTES:
                return None
            mode = item.stat().st_mode
            digest.update(str(item.relative_to(path) if item != path else item.name).encode() + b"\0")
            digest.update(str(mode & 0o111).encode() + b"\0" + data + b"\0")
    except OSError:
        return None
    if any(os.access(item, os.X_OK) for item in files):
        # A script: what it prints is not in its content.
        return None
    return digest.hexdigest()
