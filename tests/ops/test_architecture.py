"""docs/architecture.md against the code: the packages' imports, and every file and name of "How a job flows"."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.ops.markdown_pages import code_spans, section, tables

PACKAGE = REPO / "ansible_worker"
PAGE = REPO / "docs" / "architecture.md"


def import_rules(text: str) -> dict[str, list[str]]:
    """The page's table: each package or top-level module, in order, and what it may import."""
    (table,) = tables(section(text, "Imports run one way"))
    assert table.header == ["package or module", "may import"]
    return {code_spans(row[0])[0]: code_spans(row[1]) for row in table.rows}


def unit_of(path: Path) -> str:
    """The row a source file falls under: its package, or its own name at the top level."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every ansible_worker module `path` imports, below the package name (`ops.config`), lazy ones too."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            # `from ansible_worker.ops import config` imports the module ops.config.
            names = [f"{module}.{alias.name}" for alias in node.names] if node.module != "ansible_worker" else [module]
        else:
            continue
        found.update(name.removeprefix("ansible_worker.") for name in names if name.startswith("ansible_worker."))
    return found


def allowed(name: str, unit: str, rules: dict[str, list[str]]) -> bool:
    """Whether `unit` may import module `name`: its own, or under one of its rule's entries."""
    return any(name == entry or name.startswith(f"{entry}.") for entry in [unit, *rules[unit]])


def forbidden_imports(rules: dict[str, list[str]]) -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(path)
        if unit not in rules:
            problems.append(f"{path.relative_to(REPO)}: {unit} has no row on the page")
            continue
        for name in sorted(imported(path)):
            # `from ansible_worker.run.events import x`: x may be a name, not a module.
            if not allowed(name, unit, rules) and not allowed(name.rsplit(".", 1)[0], unit, rules):
                problems.append(f"{path.relative_to(REPO)}: {unit} imports {name}")
    return problems


def test_every_import_is_one_the_page_allows() -> None:
    assert forbidden_imports(import_rules(PAGE.read_text())) == []


def test_the_test_scaffolding_imports_nothing_of_the_package() -> None:
    """`testing/` serves tests and benchmarks alike, as the page says, and never the other way round."""
    files = sorted((REPO / "testing").rglob("*.py"))
    assert files
    assert {str(path.relative_to(REPO)): imported(path) for path in files if imported(path)} == {}


def test_a_forbidden_import_is_found() -> None:
    """Not a rubber stamp: take `mqtt` from what `worker` may import, and the worker's imports of it fail."""
    rules = import_rules(PAGE.read_text())
    rules["worker"] = [entry for entry in rules["worker"] if entry != "mqtt"]
    assert any("worker imports mqtt.session" in problem for problem in forbidden_imports(rules))


def test_imports_run_one_way() -> None:
    """A row may import only rows above it: no circle, and no arrow back up."""
    rules = import_rules(PAGE.read_text())
    order = list(rules)
    for unit, entries in rules.items():
        for entry in entries:
            assert order.index(entry.split(".")[0]) < order.index(unit), f"{unit} may import {entry}, below it"


@pytest.mark.parametrize("package", sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py")))
def test_each_package_states_the_rule_the_page_gives(package: str) -> None:
    """What the page says a package may import, its own `__init__` docstring says too."""
    docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or ""
    entries = import_rules(PAGE.read_text())[package]
    assert [entry for entry in entries if f"`{entry}`" not in docstring] == []


def test_the_rooms_table_names_only_modules_that_exist() -> None:
    (table,) = tables(section(PAGE.read_text(), "The rooms"))
    package = ""
    checked = 0
    for row in table.rows:
        if row[0]:
            spans = code_spans(row[0])
            package = spans[0].rstrip("/") if spans and spans[0].endswith("/") else ""
        for name in code_spans(row[1]):
            assert (PACKAGE / package / name).exists(), f"{package}/{name}"
            checked += 1
    assert checked > 50


# --- "How a job flows"

_STEP = re.compile(r"`(ansible_worker/[\w/]+\.py)`((?:,? `[\w.]+`)+)")


def names_defined(node: ast.stmt) -> list[str]:
    """The names a statement of a module or class body defines."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets if isinstance(node, ast.Assign) else []
    return [target.id for target in targets if isinstance(target, ast.Name)]


def defined(path: Path, name: str) -> bool:
    """Whether module `path` defines `name` (a function, class or variable) or `Class.attribute`."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in name.split("."):
        found = [node for node in scope if part in names_defined(node)]
        if not found:
            return False
        scope = found[-1].body if isinstance(found[-1], ast.ClassDef) else []
    return True


def flow_problems(text: str) -> list[str]:
    """Each file of the flow that does not exist, each name its file does not define, each class named without a file."""
    problems = []
    steps = 0
    for item in re.split(r"\n(?=- )", section(text, "How a job flows")):
        files = []
        for path, names in _STEP.findall(item):
            files.append(REPO / path)
            if not (REPO / path).is_file():
                problems.append(f"{path}: no such file")
                continue
            for name in re.findall(r"`([\w.]+)`", names):
                steps += 1
                if not defined(REPO / path, name):
                    problems.append(f"{path}: no {name}")
        # A class or method named in prose must be one of the item's files'.
        for name in code_spans(item):
            if re.fullmatch(r"[A-Z][a-z]\w*(\.\w+)?", name) and not any(
                f.is_file() and defined(f, name) for f in files
            ):
                problems.append(f"{name}: defined in none of {[str(f.relative_to(REPO)) for f in files]}")
    if steps < 20:
        problems.append(f"only {steps} names: is the format of the steps still `path.py` `Name`?")
    return problems


def test_every_file_and_name_of_the_flow_exists() -> None:
    assert flow_problems(PAGE.read_text()) == []


def test_a_wrong_name_in_the_flow_is_found() -> None:
    text = PAGE.read_text()
    wrong = text.replace("`Router.route`", "`Router.dispatch`", 1).replace("worker/router.py", "worker/routing.py", 1)
    problems = flow_problems(wrong)
    assert "ansible_worker/worker/routing.py: no such file" in problems
    wrong = text.replace("`Router.route`", "`Router.dispatch`", 1)
    assert "ansible_worker/worker/router.py: no Router.dispatch" in flow_problems(wrong)
