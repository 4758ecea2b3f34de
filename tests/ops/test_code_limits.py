"""The size limits of the code: no module over 450 lines, no class over 300, no function over 60.

Read with `ast` over the package, `testing/`, `benchmarks/` and the tests. What is longer on
purpose (a declarative table: argparse flags, a schema) is named in `EXCEPTIONS` with the
reason; an exception that no longer needs to be one fails too, so the table stays true.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

ROOTS = ("ansible_worker", "testing", "benchmarks", "tests")
MODULE_LINES = 450
CLASS_LINES = 300
FUNCTION_LINES = 60

# "path:qualified name" of what may be longer, and why.
EXCEPTIONS: dict[str, str] = {
    "ansible_worker/controller/parser.py:add_controller_commands": (
        "an argparse table: one `add_argument` per flag, read top to bottom as the commands' reference"
    ),
    "ansible_worker/worker/jobs.py:JobTable": (
        "the one owner of a job's lifecycle: every phase move and the hooks it rings are methods here,"
        " so that no other part of the worker moves a job"
    ),
    "ansible_worker/ops/api_schema.py:asyncapi_document": (
        "a schema: the AsyncAPI document written out as one literal, channel by channel"
    ),
}


def sources() -> Iterator[Path]:
    for root in ROOTS:
        yield from sorted((REPO / root).rglob("*.py"))


def definitions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, str, int]]:
    """Each class and function under `tree`, nested ones too: its kind, qualified name and length in lines."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}{node.name}"
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            assert node.end_lineno is not None
            yield kind, name, node.end_lineno - node.lineno + 1
            yield from definitions(node, f"{name}.")
        else:
            yield from definitions(node, prefix)


def oversized() -> dict[str, str]:
    """Everything over its limit: "path:name" (the path alone for a module) and what it measures."""
    limits = {"class": CLASS_LINES, "function": FUNCTION_LINES}
    found: dict[str, str] = {}
    for path in sources():
        where = path.relative_to(REPO).as_posix()
        text = path.read_text()
        lines = text.count("\n")
        if lines > MODULE_LINES:
            found[where] = f"module of {lines} lines (limit {MODULE_LINES})"
        for kind, name, length in definitions(ast.parse(text, filename=where)):
            if length > limits[kind]:
                found[f"{where}:{name}"] = f"{kind} of {length} lines (limit {limits[kind]})"
    return found


def test_no_module_class_or_function_is_over_its_limit_unless_named_with_a_reason() -> None:
    over = oversized()
    unlisted = [f"{name}: {size}" for name, size in over.items() if name not in EXCEPTIONS]
    assert not unlisted, "over the limit, and not in EXCEPTIONS:\n" + "\n".join(unlisted)


def test_every_exception_is_still_over_its_limit() -> None:
    over = oversized()
    stale = [name for name in EXCEPTIONS if name not in over]
    assert not stale, f"within the limits now, remove from EXCEPTIONS: {stale}"
