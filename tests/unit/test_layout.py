"""The layout shows the plan: tasks/ is packages by stage, and imports run one way (a stage imports
only earlier stages and tasks.common; schemas imports nothing of tasks or flows; flows import
anything). Every import counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# What each package may import of this repository.
ALLOWED = {
    "schemas": {"schemas"},
    "tasks": set(),  # the package's own __init__ (the memory pool)
    "tasks.common": {"schemas", "tasks.common"},
    "tasks.ingest": {"schemas", "tasks.common", "tasks.ingest"},
    "tasks.model": {"schemas", "tasks.common", "tasks.ingest", "tasks.model"},
    "tasks.outputs": {"schemas", "tasks.common", "tasks.ingest", "tasks.model", "tasks.outputs"},
    "tasks.landing": {"schemas", "tasks.common", "tasks.ingest", "tasks.landing"},
}
OURS = ("schemas", "tasks", "flows", "scripts")


def package_of(module: str) -> str:
    """`tasks.ingest.scan` -> `tasks.ingest`; `schemas.params` -> `schemas`."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "tasks" and len(parts) > 2 else parts[0]


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of this repository's modules in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
            # `from tasks import ingest` names a package too
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in OURS]


def backward_imports(root: Path = REPO) -> list[str]:
    problems = []
    for top in ("schemas", "tasks"):
        for path in sorted((root / top).rglob("*.py")):
            here = package_of(module_name(path, root))
            if here not in ALLOWED:
                problems.append(f"{path.relative_to(root)}: not in a stage package")
                continue
            seen = set()
            for line, name in imports_of(path):
                there = package_of(name)
                # `from tasks.ingest import x` lists `tasks.ingest.x` too: one finding a line
                if there not in ALLOWED[here] and there != "tasks" and (line, there) not in seen:
                    seen.add((line, there))
                    problems.append(f"{path.relative_to(root)}:{line}: {here} imports {name}")
    return problems


def test_imports_run_one_way():
    assert backward_imports() == []


def test_every_module_of_tasks_lives_in_a_stage_package():
    loose = [p.name for p in (REPO / "tasks").glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    for package in (REPO / "tasks").iterdir():
        if package.is_dir() and package.name != "__pycache__":
            doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
            assert "Imports" in doc, f"tasks/{package.name}/__init__.py: what may it import?"


@pytest.mark.parametrize(
    ("importer", "statement"),
    [
        ("tasks/ingest/scan.py", "from tasks.model.train import fit_scan"),
        ("tasks/common/errors.py", "import tasks.ingest.csvfile"),
        ("tasks/landing/ledger.py", "from tasks.outputs import publish"),
        ("schemas/params.py", "from flows.cli import run_flow"),
    ],
)
def test_a_backward_import_is_found(importer, statement, tmp_path):
    for top in ("schemas", "tasks"):
        for path in (REPO / top).rglob("*.py"):
            target = tmp_path / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    victim = tmp_path / importer
    victim.write_text(victim.read_text() + f"\n\ndef _late():\n    {statement}\n")
    (problem,) = backward_imports(tmp_path)
    assert problem.startswith(f"{importer}:")
